"""Typed, validated configuration shared by every stage.

One YAML file holds every section; CLI flags override single fields with dotted paths
(`--set train.batch_size=16`). Every value is checked at load time, and a bad one fails with the
field's dotted name and the reason, before any work starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.expressions import EXPRESSIONS, check_expression_names


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the field."""


# Options that were measured and not adopted, with the value that meant "off" and the page that
# records them. Stored configs (checkpoints, dataset plans) still name them: pipeline.core.legacy drops them.
RETIRED_FIELDS: dict[str, tuple[Any, str]] = {
    "model.id_spatial_channels": (0, "docs/experiments/id_spatial_channels.md"),
    "model.id_spatial_resolution": (16, "docs/experiments/id_spatial_channels.md"),
    "model.skip_features": (False, "docs/experiments/skip_fed_generator.md"),
    "train.balanced_classes": (False, "docs/experiments/balanced_classes.md"),
    "train.cross_expression_map": (False, "docs/experiments/cross_expression_map.md"),
    "train.judge_ensemble": (1, "docs/experiments/judge_ensemble.md"),
    "train.loss.map_invariance": (0.0, "docs/experiments/map_invariance.md"),
    "train.loss.perceptual": (0.0, "docs/experiments/perceptual.md"),
    "train.loss.swap_change": (0.0, "docs/experiments/swap_change.md"),
    # Replaced, not measured: None means any stored value reads as today's (it changed no network or run).
    "tstr.seed": (None, "docs/tstr.md"),
    # Read by nothing: the data's resolution is its own, samples come once per stage, the pool is prefect.yaml's.
    "data.resolution": (None, "docs/code_layout.md"),
    "train.sample_every": (None, "docs/code_layout.md"),
    "schedule.work_pool": (None, "docs/scheduling.md"),
    # An output, not a setting: how thresholds were calibrated lives beside the config (plan.json, the card).
    "quality.calibration": (None, "docs/dataset-format.md"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _power_of_two(v: int, lo: int = 16) -> int:
    if v < lo or v & (v - 1):
        raise ValueError(f"must be a power of two >= {lo}, got {v}")
    return v


class ProceduralConfig(_Section):
    """The embedded procedural face dataset (`fersynth data make`)."""

    seed: int = 0
    n_identities: int = Field(200, ge=3, le=1_000_000)
    expressions: list[str] = Field(default_factory=lambda: list(EXPRESSIONS))
    # Intensities rendered for every non-neutral expression; neutral is always intensity 0.
    intensities: list[float] = Field(default_factory=lambda: [0.5, 1.0])
    samples_per_cell: int = Field(1, ge=1, le=1000, description="nuisance draws per (identity, expression, intensity)")
    resolution: int = 64
    nuisance_strength: float = Field(1.0, ge=0.0, le=2.0)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)

    _res = field_validator("resolution")(lambda cls, v: _power_of_two(v))

    _expr = field_validator("expressions")(lambda cls, v: check_expression_names(v))

    @field_validator("intensities")
    @classmethod
    def _intensities_in_range(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < x <= 1.0 for x in v):
            raise ValueError(f"intensities must be non-empty and in (0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _splits_leave_train(self) -> ProceduralConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% of identities for training")
        return self


class DataConfig(_Section):
    """Where the labelled training data lives (a folder made by `fersynth data make` or an adapter)."""

    root: Path = Path("data/procedural-64")
    cache_dir: Path | None = Field(None, description="tensor cache folder; default <root>/.cache")


class ModelConfig(_Section):
    backbone: Literal["resnet50", "resnet18", "small"] = "resnet50"
    backbone_weights: Path | None = Field(None, description="local torchvision state_dict for the backbone")
    id_dim: int = Field(128, ge=4, le=2048, description="width of the identity vector (steers every layer)")
    edit_mask: bool = Field(
        False,
        description="the generator also draws a mask; a render of a real face is composited over its source "
        "photo (GANimation), so only what the expression changes is redrawn",
    )
    photo_skips: bool = Field(
        False,
        description="the generator reads the source photo, with the target expression code tiled over it, "
        "through a down path whose features join every resolution (a U-Net); novel identities get none",
    )
    lean_generator: bool = Field(
        False,
        description="one styled conv per doubling and a strided photo path: about the cost of issue 29's "
        "editor U-Net per step, so the minutes buy several times the swaps",
    )
    code_norm: bool = Field(
        False,
        description="codes on their sphere (PixelNorm): the encoder emits them so and the generator reads any "
        "code so; raw codes swing every AdaIN scale per photo until the edit mask shuts and never reopens, "
        "and a probe or the feedback's MSE can grow them without bound (docs/experiments/codes_on_sphere.md)",
    )
    exp_code_probe: bool = Field(
        False,
        description="a linear probe reads the expression label off the expression code; train.loss.exp_code "
        "holds the code to the label, so the target a swap is given is unmistakable from the first step",
    )
    exp_dim: int = Field(32, ge=2, le=1024)
    mapping_layers: int = Field(4, ge=1, le=16)
    mapping_lr_mul: float = Field(0.1, gt=0, le=1.0, description="equalised-lr multiplier of the mapping MLP")
    gen_channels: int = Field(256, ge=8, le=1024, description="channels at 4x4; halves with resolution")
    gen_min_channels: int = Field(32, ge=4, le=1024)
    disc_channels: int = Field(256, ge=8, le=1024)
    max_resolution: int = 64
    num_classes: int = Field(7, ge=2, le=7)
    feedback_channels: int = Field(64, ge=8, le=1024)
    judge_channels: int = Field(32, ge=8, le=512)
    judge_embed_dim: int = Field(128, ge=8, le=1024)

    _res = field_validator("max_resolution")(lambda cls, v: _power_of_two(v, lo=8))


class StageConfig(_Section):
    resolution: int
    steps: int = Field(ge=1)
    fade_steps: int = Field(0, ge=0)
    batch_size: int | None = Field(
        None, ge=2, le=4096, description="overrides train.batch_size (low resolutions are cheap)"
    )
    decay_steps: int = Field(
        0,
        ge=0,
        description="every learning rate falls linearly towards 0 over the stage's last decay_steps steps "
        "(0: constant); a final polish for the encoder, which has no EMA copy",
    )

    _res = field_validator("resolution")(lambda cls, v: _power_of_two(v, lo=4))

    def lr_scale(self, step: int) -> float:
        """Multiplier of every learning rate at `step` (0-based) of this stage."""
        start = self.steps - self.decay_steps
        if self.decay_steps == 0 or step < start:
            return 1.0
        return (self.steps - step) / self.decay_steps


class LossWeights(_Section):
    adv: float = Field(1.0, ge=0)
    r1: float = Field(1.0, ge=0, description="R1 gamma")
    recon: float = Field(10.0, ge=0)
    latent: float = Field(1.0, ge=0)
    swap_cls: float = Field(1.0, ge=0)
    identity: float = Field(1.0, ge=0)
    cycle: float = Field(5.0, ge=0)
    aux_cls: float = Field(1.0, ge=0)
    swap_truth: float = Field(0.0, ge=0, description="paired swap loss against ground truth (procedural only)")
    changed_weight: float = Field(
        0.0,
        ge=0,
        description="extra weight of the swap-truth L1 on the pixels the swap must change (truth differs from "
        "source): 10 makes a changed pixel count 11 times an unchanged one",
    )
    raw_truth: float = Field(
        1.0,
        ge=0,
        description="share of the swap-truth terms also given to the plain RGB of a swap drawn over its photo "
        "(model.edit_mask); 0 holds only the composite to the truth, so the RGB is spent where the mask opens",
    )
    code_swap_truth: float = Field(
        0.0,
        ge=0,
        description="swap-truth L1 (+ SSIM) of swaps drawn from the codes alone, no photo (what a novel identity "
        "gets), on half the rows with a truth; for generators that read the photo (model.photo_skips)",
    )
    exp_code: float = Field(
        1.0, ge=0, description="cross-entropy of the expression probe on source and target codes (model.exp_code_probe)"
    )
    ssim: float = Field(
        0.0, ge=0, description="1 - SSIM added to the reconstruction and swap-truth terms (stages >= 16 px)"
    )
    ssim_changed_weight: float = Field(
        0.0,
        ge=0,
        description="extra weight of the swap-truth SSIM on the pixels the swap must change, as changed_weight is "
        "for the L1: 0 averages SSIM over the whole image, where the unchanged pixels are most of it",
    )
    mask: float = Field(
        0.1,
        ge=0,
        description="mean of the edit mask on swaps (model.edit_mask): redraw only what must change (GANimation)",
    )


class TrainConfig(_Section):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(32, ge=2, le=4096)
    lr: float = Field(2e-3, gt=0, le=1.0)
    encoder_lr: float = Field(2e-4, gt=0, le=1.0, description="Adam lr of the encoder (its backbone is not equalised)")
    betas: tuple[float, float] = Field((0.0, 0.99), description="Adam betas of the discriminator")
    gen_betas: tuple[float, float] | None = Field(
        None, description="Adam betas of generator, encoder and feedback (None: same as betas)"
    )
    balanced_targets: bool = Field(
        False,
        description="draw each swap's target (donor) image uniformly over expression classes (sources stay "
        "uniform over images); the donors are encoded beside the sources (one more encoder pass per step)",
    )
    recon_share: float = Field(
        1.0,
        gt=0,
        le=1.0,
        description="share of each batch also reconstructed from its codes alone (the recon, latent and "
        "adversarial terms of reconstructions); less leaves more of a step to the swaps",
    )
    # Recovering codes through a swap drawn over its photo pulls it back to the photo (issue 29's bisection).
    feedback_reads: Literal["all", "codes"] = Field(
        "all",
        description="renders the feedback network recovers the codes from: all (the paper), or codes: only those "
        "drawn from the codes alone (reconstructions, code-only swaps; model.photo_skips), not the photo's swaps",
    )
    disc_lr: float | None = Field(None, gt=0, le=1.0, description="Adam lr of the discriminator (None: lr)")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(10.0, gt=0, description="max gradient norm per optimiser step (None: no clipping)")
    stages: list[StageConfig] = Field(
        default_factory=lambda: [
            StageConfig(resolution=8, steps=500, fade_steps=0),
            StageConfig(resolution=16, steps=1000, fade_steps=500),
            StageConfig(resolution=32, steps=1500, fade_steps=750),
            StageConfig(resolution=64, steps=2000, fade_steps=1000),
        ]
    )
    loss: LossWeights = Field(default_factory=LossWeights)
    judge_steps: int = Field(600, ge=1, description="steps to train the expression classifier / identity embedder")
    # 0 by default because a checkpoint's stored config names only the fields of its day: a missing
    # field must read as what that checkpoint's judges had (no softening).
    judge_soften: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of the judges' training batches blurred or resampled, so they judge expressions "
        "and identities rather than sharpness (0.5 recommended; see README Results)",
    )
    # One judge's verdicts flip with its seed; independently seeded judges averaged do not.
    judge_panel: int = Field(
        3, ge=1, description="expression judges whose mean probability gates each render (the independent one + others)"
    )
    # None for a stored config of its day: those judges trained at the rule below, whatever it gave them.
    eval_judge_batch_size: int | None = Field(
        None,
        ge=1,
        description="batch of the independent judges and the gate panel, so scoring does not move with the GAN's "
        "batch; None: twice train.batch_size, at most 128",
    )
    checkpoint_every: int = Field(200, ge=1)
    num_threads: int | None = Field(None, ge=1, le=256)
    channels_last: bool = Field(
        True,
        description="NHWC weights for the conv nets: faster steps on CPU (oneDNN) and the usual layout for GPU "
        "convolutions; a speed setting only (a run may resume with the other layout)",
    )
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32",
        description="GAN training steps under bfloat16 autocast (weights, optimiser state and judges stay "
        "float32); auto: bf16 where the hardware runs it natively (CPUs with AVX512-BF16/AMX, CUDA GPUs "
        "with bf16), fp32 elsewhere",
    )
    out_dir: Path = Path("runs/default")

    @model_validator(mode="after")
    def _stages_increase(self) -> TrainConfig:
        res = [s.resolution for s in self.stages]
        if not res:
            raise ValueError("stages: at least one stage is needed")
        if res != sorted(set(res)):
            raise ValueError(f"stages: resolutions must strictly increase, got {res}")
        for i, s in enumerate(self.stages):
            if s.fade_steps > s.steps:
                raise ValueError(f"stages.{i}.fade_steps ({s.fade_steps}) exceeds stages.{i}.steps ({s.steps})")
            if s.decay_steps > s.steps - s.fade_steps:
                raise ValueError(
                    f"stages.{i}.decay_steps ({s.decay_steps}) overlaps the fade-in: at most steps - fade_steps "
                    f"({s.steps - s.fade_steps})"
                )
        return self


class QualityConfig(_Section):
    """Quality checks and gates (`pipeline.quality`).

    Thresholds are starting points; `pipeline.quality.gates.calibrate_*` derives them from real data
    (FaceNet cosine thresholds differ between published sources, so copy none blindly).
    """

    outside_judge_steps: int = Field(
        1500,
        ge=1,
        description="training steps of the outside expression judge (another architecture, sharp photos; "
        "pipeline.quality.outside_judge), trained once per dataset and cached",
    )
    thresholds: Literal["calibrated", "config"] = Field(
        "calibrated",
        description="calibrated: embedder identity and expression thresholds from the checkpoint's real-val calibration",
    )
    identity_backend: Literal["auto", "facenet", "embedder"] = Field(
        "auto", description="auto: the project's identity embedder for procedural data, FaceNet for photos"
    )
    # Photos: FaceNet cosine; 0.5 sits between same- and different-person scores (docs/measurements_from_code.md).
    identity_threshold: float = Field(0.5, ge=-1.0, le=1.0, description="min FaceNet cosine to the source identity")
    embedder_identity_threshold: float = Field(
        0.5, ge=-1.0, le=1.0, description="min cosine for the project's identity embedder (procedural data)"
    )
    face_detection: bool = Field(True, description="MTCNN-crop photos before FaceNet; False for aligned crops")
    expression_threshold: float = Field(0.5, ge=0.0, le=1.0, description="min classifier probability of the target")
    expression_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="per-expression min probability of the target; classes not listed use expression_threshold",
    )
    # Per class: one pooled threshold is set by the classes the judge is surest of, and fails the others.
    expression_calibration: Literal["per_class", "pooled"] = Field(
        "per_class",
        description="calibrated thresholds: each expression's own (see expression_keep) or one pooled",
    )
    # Below 1.0 a threshold sits where panels of other seeds disagree most on soft renders (docs/gates.md).
    expression_keep: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="calibration: share of each class's correctly judged real val images its threshold lets pass",
    )
    ssim_floor: float = Field(0.5, ge=-1.0, le=1.0, description="min per-image SSIM and min dataset mean SSIM")
    fid_ceiling: float = Field(50.0, gt=0.0, description="max FID vs held-out real images (only with enough images)")
    kid_ceiling: float = Field(0.05, gt=0.0, description="max KID mean vs held-out real images")
    pass_rate_floor: float = Field(0.8, ge=0.0, le=1.0, description="min fraction of renders passing every check")
    class_balance_tolerance: float = Field(1.5, ge=1.0, description="max ratio of largest to smallest class count")
    min_fid_images: int = Field(2048, ge=2, description="below this many images per set FID is reported, KID gates")
    kid_subset_size: int = Field(1000, ge=2, description="clamped to the smaller set size at run time")
    kid_subsets: int = Field(100, ge=1)
    # Judges read renders, not what they teach: a recogniser trained on them must also recognise real faces.
    usefulness: bool = Field(
        True, description="gate on a small recogniser trained on passing renders, tested on real validation faces"
    )
    usefulness_floor: float = Field(
        0.6, ge=0.0, description="min accuracy ratio: trained on renders / trained on as many real images"
    )
    usefulness_max_images: int = Field(2000, ge=1, description="passing renders (and real images) trained on")
    usefulness_max_eval_images: int = Field(1000, ge=1, description="real validation images tested on")
    usefulness_steps: int = Field(300, ge=1, description="optimiser steps of each recogniser")
    usefulness_batch_size: int = Field(64, ge=1)
    usefulness_recognisers: int = Field(
        3, ge=1, description="independently seeded recogniser pairs; the gate reads their mean ratio"
    )
    usefulness_split: str = Field("val", description="real split the recognisers are tested on (never 'test')")
    facenet_weights: Path | None = Field(
        None, description="local FaceNet state_dict (else env FERSYNTH_FACENET_WEIGHTS, else download)"
    )
    fid_weights: Path | None = Field(
        None, description="local FID Inception TorchScript (else env FERSYNTH_FID_WEIGHTS, else torchmetrics default)"
    )
    fid_torch_fidelity_weights: Path | None = Field(
        None, description="local torch-fidelity Inception weights for torchmetrics' default extractor"
    )
    calibration_max_images: int = Field(
        300,
        ge=4,
        description="real photos FaceNet's identity threshold is calibrated on (photo data; ~2-4 img/s on CPU)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(32, ge=1, le=4096)

    @field_validator("expression_thresholds")
    @classmethod
    def _known_expressions(cls, v: dict[str, float]) -> dict[str, float]:
        if v:
            check_expression_names(list(v))
        bad = {k: t for k, t in v.items() if not 0.0 <= t <= 1.0}
        if bad:
            raise ValueError(f"expression thresholds must be in [0, 1], got {bad}")
        return v

    @field_validator("usefulness_split")
    @classmethod
    def _not_the_test_split(cls, v: str) -> str:
        if v == "test":
            raise ValueError("the test split only reports results; test the usefulness recognisers on 'val'")
        return v

    def expression_threshold_for(self, expression: str) -> float:
        """The min target probability a render of `expression` needs (its own, else the pooled one)."""
        return self.expression_thresholds.get(expression, self.expression_threshold)

    def identity_threshold_for(self, backend: str) -> float:
        """The identity threshold of a resolved backend ('facenet' or 'embedder'): their cosines differ."""
        return self.identity_threshold if backend == "facenet" else self.embedder_identity_threshold


class GenerateConfig(_Section):
    """Dataset generation (`fersynth generate`): the identity x expression sweep, sharding, FID and runners.

    Everything that changes which pixels are rendered (identities, expressions, intensities, repeats,
    seed, jitter) goes into the plan key and so into every sample id; the rest (batching, device,
    runner, FID caps) only changes how fast or how thoroughly the same images are made and checked.
    """

    name: str | None = Field(None, description="dataset folder name under --out (default: fersynth-<plan key>)")
    identity_sources: list[Literal["real", "novel", "file"]] = Field(
        default_factory=lambda: ["real"],
        description="real: identities of generate.real_split; novel: sampled w_id; file: ids listed in identity_file",
    )
    real_split: Literal["train", "val", "test"] = Field("train", description="split whose identities are encoded")
    max_real_identities: int | None = Field(None, ge=1, description="cap on real identities (first by id)")
    n_novel: int = Field(0, ge=0, le=1_000_000, description="novel identities sampled from the fitted w_id Gaussian")
    identity_file: Path | None = Field(None, description="text file: one identity id of the data per line")
    expressions: list[str] = Field(default_factory=lambda: list(EXPRESSIONS))
    # Neutral is always rendered at intensity 0, as often as the other classes (balanced by construction).
    intensities: list[float] = Field(default_factory=lambda: [1.0])
    repeats: int = Field(1, ge=1, le=10_000, description="renders per (identity, expression, intensity)")
    intensity_range: tuple[float, float] | None = Field(
        None,
        description="[low, high]: each render of an expressive class draws its intensity uniformly from it "
        "(seeded per sample; `repeats` renders per identity and expression) instead of the `intensities` grid",
    )
    source_photos: Literal["all", "first_neutral"] = Field(
        "all",
        description="which photos of a real identity its renders start from: all (each render takes the next of "
        "its photos, every session, pose, light and expression, with that photo's own codes) or first_neutral "
        "(one neutral photo and the identity's mean code for every render)",
    )
    seed: int = Field(0, ge=0, description="novel identities, per-sample jitter seeds and FID subsets")
    exp_jitter: float = Field(
        0.1, ge=0.0, le=2.0, description="w_exp noise of repeats > 0, in units of the per-dim spread of class centroids"
    )
    id_jitter: float = Field(
        0.0, ge=0.0, le=2.0, description="w_id noise of repeats > 0, in units of the fitted w_id std"
    )
    composite: Literal["difference", "mask"] = Field(
        "difference",
        description="how a real identity is drawn over its photo: difference (redraw where the render for the "
        "target expression differs from the render for the photo's own; any checkpoint) or mask (the "
        "generator's learned edit mask, model.edit_mask); `fersynth evaluate` scores swaps the same way",
    )
    shard_size: int = Field(1000, ge=1, le=1_000_000, description="images per manifest shard (one task per shard)")
    batch_size: int = Field(64, ge=1, le=4096, description="render/check batch size")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fid_split: Literal["train", "val", "test"] = Field("test", description="held-out real images FID/KID compare to")
    fid_max_images: int = Field(2000, ge=2, description="cap on images per side for FID/KID (Inception is slow on CPU)")
    report_max_images: int = Field(2000, ge=1, description="renders loaded for the report's best/worst grids")
    grid_identities: int = Field(6, ge=1, le=64, description="rows of the sample grid (identities x expressions)")
    task_runner: Literal["threads", "dask"] = Field("threads", description="Prefect task runner of the generate flow")
    max_workers: int = Field(1, ge=1, le=256, description="shard tasks at once (threads) / local Dask workers")
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster (else a local one)")

    @field_validator("expressions")
    @classmethod
    def _known_expressions(cls, v: list[str]) -> list[str]:
        check_expression_names(v)
        if len(set(v)) != len(v):
            raise ValueError(f"expressions repeat: {v}")
        return v

    @field_validator("intensities")
    @classmethod
    def _intensities_in_range(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < x <= 1.0 for x in v):
            raise ValueError(f"intensities must be non-empty and in (0, 1], got {v}")
        if len({round(x, 4) for x in v}) != len(v):
            raise ValueError(f"intensities repeat: {v}")
        return v

    @field_validator("intensity_range")
    @classmethod
    def _range_in_unit_interval(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(f"intensity_range must be [low, high] with 0 < low <= high <= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _one_intensity_rule(self) -> GenerateConfig:
        # Compared with the default, not model_fields_set: a stored config carries every field.
        if self.intensity_range is not None and self.intensities != [1.0]:
            raise ValueError("set generate.intensities or generate.intensity_range, not both")
        return self

    @field_validator("identity_sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"identity_sources must be a non-empty list without repeats, got {v}")
        return v


TstrArm = Literal[
    "synthetic",
    "real-matched",
    "real",
    "real+synthetic",
    "real-small",
    "real-small+synthetic",
    "real-small+real-matched",
]


class TstrConfig(_Section):
    """Train-on-synthetic, test-on-real (`fersynth tstr`): a standard classifier per training-data arm.

    Every arm gets the same optimiser-step budget (not epochs), so arms with more data are not
    favoured by simply taking more gradient steps.
    """

    arms: list[TstrArm] = Field(
        default_factory=lambda: list(get_args(TstrArm)),
        description="training sets to compare (see pipeline/tstr.py); all are evaluated on the real eval_split",
    )
    control_shuffled: bool = Field(
        False, description="extra arm, first seed of each recipe: real data with shuffled labels (a sanity control)"
    )
    steps: int = Field(2000, ge=1, le=10_000_000, description="optimiser steps per arm")
    batch_size: int = Field(64, ge=2, le=4096)
    lr: float = Field(1e-3, gt=0, le=1.0, description="AdamW learning rate (cosine decay to 0)")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    image_size: int = Field(64, ge=16, le=512, description="classifier input size in pixels")
    n_small_identities: int = Field(10, ge=1, description="real training identities of the small-real arms")
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1, description="one run of every arm per seed; mean ± std"
    )
    recipes: list[Literal["plain", "augmented"]] = Field(
        default_factory=lambda: ["plain", "augmented"],
        min_length=1,
        description="downstream training recipes (pipeline/downstream/recipes.py); every arm runs under each",
    )
    synthetic_filters: list[str] = Field(
        default_factory=list, description="pandas queries over the synthetic manifest, e.g. 'intensity >= 0.5'"
    )
    require_pass: bool = Field(True, description="use only synthetic images whose per-image checks all passed")
    eval_split: Literal["train", "val", "test"] = "test"
    augment: bool = Field(True, description="random horizontal flips during training")
    num_workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out_dir: Path = Path("runs/tstr")

    @field_validator("seeds", "recipes", "arms")
    @classmethod
    def _no_repeats(cls, v: list[Any]) -> list[Any]:
        if len(set(v)) != len(v):
            raise ValueError(f"lists an entry twice: {v}")
        return v


class ScheduleConfig(_Section):
    """Scheduled dataset generation (`fersynth serve`, flows/serve.py, prefect.yaml).

    Every scheduled run writes a new dataset version named <name_prefix>-<UTC time>-<run id>
    under `out`, so a published dataset is never overwritten.
    """

    cron: str | None = Field(None, description="cron string, e.g. '0 3 * * *'; None = no schedule")
    timezone: str = Field("UTC", description="IANA time zone the cron string is read in")
    deployment_name: str = Field("fersynth-generate", min_length=1)
    checkpoint: Path | None = Field(None, description="generator checkpoint the scheduled runs render from")
    out: Path = Field(Path("datasets"), description="root folder the dataset versions are written under")
    name_prefix: str = Field("fersynth", min_length=1, description="dataset versions are <prefix>-<time>-<run id>")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        # Prefect's own schedule model: what parses here is exactly what the Prefect API accepts.
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=v)
        except ValidationError as exc:
            msg = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise ValueError(f"not a valid cron schedule: {msg}") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r}") from None
        return v

    @field_validator("name_prefix")
    @classmethod
    def _plain_prefix(cls, v: str) -> str:
        if "/" in v or v.startswith((".", "_")):
            raise ValueError(f"must be a plain folder-name prefix (no '/', not hidden), got {v!r}")
        return v


class Config(_Section):
    procedural: ProceduralConfig = Field(default_factory=ProceduralConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    tstr: TstrConfig = Field(default_factory=TstrConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @model_validator(mode="after")
    def _model_covers_stages(self) -> Config:
        top = self.train.stages[-1].resolution
        if top > self.model.max_resolution:
            raise ValueError(f"train.stages ends at {top} px but model.max_resolution is {self.model.max_resolution}")
        return self


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        retired = f"; a retired option, see {RETIRED_FIELDS[loc][1]}" if loc in RETIRED_FIELDS else ""
        lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r}){retired}")
    return "\n".join(lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r} has an empty field name")
    # YAML parsing gives numbers, booleans, lists ([1, 2]) and null the way a config file would.
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = nxt
        node[path[-1]] = value
    return raw


def to_overrides(d: dict[str, Any], prefix: str = "") -> list[str]:
    """A config dict as `section.field=value` overrides (JSON values parse as YAML), e.g. to rebuild
    the config a checkpoint was trained with and apply a user's overrides on top."""
    out: list[str] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out += to_overrides(v, key + ".") if isinstance(v, dict) else [f"{key}={json.dumps(v)}"]
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply dotted overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    if overrides:
        raw = apply_overrides(raw, overrides)
        source += " + overrides"
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """JSON-safe dict of a config (paths as strings), for checkpoints and dataset cards."""
    return cfg.model_dump(mode="json")
