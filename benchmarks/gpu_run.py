"""One GPU session's figures, end to end, into one folder small enough to bring back (issue 31).

    python benchmarks/gpu_run.py --out $OUT                        # on a GPU: about 6 minutes
    python benchmarks/gpu_run.py --tiny --device cpu --out /tmp/g  # every step on a CPU: about 40 s

On a GPU it makes the procedural data (128 px, and 64 px if missing) with `fersynth data make`,
trains `configs/gpu-128.yaml` and `configs/cpu-64.yaml` at 4x and 16x its CPU schedule (every
stage's steps, fade_steps and decay_steps times the factor), evaluates each checkpoint with
`fersynth evaluate`, times the generator alone (images/s, float32 and bf16 autocast) and a full
`fersynth generate` (PNG writing and every gate) at each resolution, and exports each checkpoint with
`fersynth export --half`.

A device session is short and cannot be extended, so the script plans against a wall-clock budget
(--budget-s): it first times a few training steps of each recipe at every resolution, predicts
each run from them, and skips (with the prediction) any run that would not finish in the time left.
Every step is timed, a failure is recorded and the next step runs, and the figures are rewritten
atomically after each step, so a run cut short still leaves what it measured.

What comes back from a device machine is limited (8 files, 16 MiB each, 64 MiB in all), so --out
holds only the half-precision exports, figures.json and gpu_run.log; data, run folders, eval
reports and datasets stay in --work. --tiny runs the same steps on configs/tiny.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# What a device machine hands back (docs/benchmarks.md): more is silently left behind.
OUT_MAX_FILES = 8
OUT_MAX_FILE_BYTES = 16 * 2**20
OUT_MAX_TOTAL_BYTES = 64 * 2**20
FIGURES = "figures.json"
LOG = "gpu_run.log"
LOG_MAX_BYTES = 2**20
# Packages whose versions explain a figure; optional ones (triton: torch.compile's GPU backend) may be absent.
PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "pillow",
    "torchmetrics",
    "torch-fidelity",
    "facenet-pytorch",
    "scikit-image",
    "scipy",
    "pyarrow",
    "pandas",
    "prefect",
    "typer",
    "pydantic",
    "triton",
)


@dataclass(frozen=True)
class Mode:
    """What differs between the GPU session and its CPU rehearsal (--tiny)."""

    name: str
    runs: tuple[str, ...]
    budget_s: float
    probe_steps: int  # timed training steps per resolution, after one warm-up step
    render_batch: int
    render_seconds: float  # least time each generator timing runs for
    generate_sets: tuple[str, ...]
    data_workers: int | None  # None: every core
    # Judges, calibration and checkpoints around the GAN steps of a run, until one run has measured it.
    train_overhead_s: float
    # Evaluate + export + render timing after a run: kept free when deciding whether a run fits.
    after_train_s: float


GPU = Mode(
    name="gpu",
    runs=("gpu-128", "cpu-64x4", "cpu-64x16"),
    # Six minutes of wall, less a margin for start-up and for bringing the files back.
    budget_s=330.0,
    probe_steps=10,
    render_batch=256,
    render_seconds=3.0,
    # Every gate at its default; 300 real identities x 7 expressions = 2,100 renders, FID on up to 2,000.
    generate_sets=("generate.max_real_identities=300", "generate.batch_size=256"),
    data_workers=None,
    train_overhead_s=45.0,
    after_train_s=60.0,
)
# The settings tests/fast_settings.py gives the tiny generation tests: every gate runs, on a handful of images.
TINY = Mode(
    name="tiny",
    # One run walks every kind of step; what a second run changes (its schedule, the measured overhead in its
    # prediction, no second generation at one resolution) is plain bookkeeping, tested without training.
    runs=("tiny",),
    budget_s=900.0,
    probe_steps=2,
    render_batch=32,
    render_seconds=0.3,
    generate_sets=(
        "generate.shard_size=10",
        "generate.batch_size=8",
        "generate.fid_max_images=8",
        "generate.report_max_images=16",
        "quality.kid_subsets=10",
        "quality.usefulness_steps=3",
        "quality.usefulness_batch_size=8",
        "quality.usefulness_max_eval_images=32",
        "quality.usefulness_recognisers=1",
    ),
    data_workers=1,
    train_overhead_s=10.0,
    after_train_s=20.0,
)


class StepFailed(RuntimeError):
    """A step ran and failed; the message says how (exit code and the tail of its log)."""


@dataclass(frozen=True)
class RunSpec:
    """One training run: a recipe in configs/ and the factor its schedule is stretched by."""

    name: str
    base: Path
    scale: int

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        """'cpu-64x4' is configs/cpu-64.yaml at 4x its steps; 'gpu-128' is configs/gpu-128.yaml as it is."""
        m = re.fullmatch(r"(?P<stem>[\w.-]+?)(?:x(?P<scale>\d+))?", text)
        if not m:
            raise argparse.ArgumentTypeError(f"run {text!r}: expected CONFIG or CONFIGxN, e.g. cpu-64x4")
        base = REPO / "configs" / f"{m['stem']}.yaml"
        if not base.is_file():
            raise argparse.ArgumentTypeError(f"run {text!r}: no {base.relative_to(REPO)}")
        scale = int(m["scale"] or 1)
        if scale < 1:
            raise argparse.ArgumentTypeError(f"run {text!r}: the factor must be at least 1")
        return cls(text, base, scale)


@dataclass
class Session:
    """The output folder, the work folder, the budget and the figures gathered so far."""

    out: Path
    work: Path
    mode: Mode
    device: str
    budget_s: float
    t0: float = field(default_factory=time.perf_counter)
    figures: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def say(self, line: str) -> None:
        """Print a line and keep it in gpu_run.log (capped: the log must stay one small file)."""
        stamped = f"[{time.perf_counter() - self.t0:7.1f} s] {line}"
        print(stamped, flush=True)
        log = self.out / LOG
        if not log.exists() or log.stat().st_size < LOG_MAX_BYTES:
            with log.open("a", encoding="utf-8") as f:
                f.write(stamped + "\n")

    def save(self) -> None:
        """Rewrite figures.json atomically: a session killed mid-step keeps every finished step's figures."""
        from pipeline.io_utils import atomic_write_json

        self.figures["wall_s"] = round(time.perf_counter() - self.t0, 1)
        atomic_write_json(self.out / FIGURES, self.figures)

    def step(
        self, name: str, fn: Callable[[], dict[str, Any]], predict_s: float | None = None
    ) -> dict[str, Any] | None:
        """Run one timed step and record it; skip it when its prediction does not fit the time left.

        Returns the step's figures, or None when it was skipped or failed (the reason is recorded).
        """
        rec: dict[str, Any] = {"name": name}  # the timeline only: a step's figures go where its caller puts them
        if predict_s is not None:
            rec["predicted_s"] = round(predict_s, 1)
            if predict_s > self.remaining():
                rec.update(status="skipped", reason=f"predicted {predict_s:.0f} s > {self.remaining():.0f} s left")
                return self._record(rec, None)
        if self.remaining() <= 0:
            rec.update(status="skipped", reason="budget spent")
            return self._record(rec, None)
        self.say(f"{name} ...")
        start = time.perf_counter()
        result: dict[str, Any] | None = None
        try:
            result = fn()
            rec["status"] = "ok"
        except Exception as exc:  # recorded, and the session goes on: the other figures are still worth having
            rec.update(status="failed", error=f"{type(exc).__name__}: {exc}"[-3000:])
        rec["seconds"] = round(time.perf_counter() - start, 2)
        return self._record(rec, result)

    def _record(self, rec: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any] | None:
        self.figures.setdefault("steps", []).append(rec)
        detail = rec.get("reason") or rec.get("error", "")
        self.say(
            f"{rec['name']}: {rec['status']}"
            + (f" in {rec['seconds']} s" if "seconds" in rec else "")
            + (f" ({detail})" if detail else "")
        )
        self.save()
        return result


# --------------------------------------------------------------------------- environment


def environment(device: str) -> dict[str, Any]:
    """What the figures were measured with: torch, the device, bf16, torch.compile, package versions."""
    import torch

    from manifests.card import package_versions
    from pipeline.core.device import resolve_device
    from pipeline.core.networks import autocast_dtype, native_bf16
    from pipeline.weights import find_weight

    dev = resolve_device(device)
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": str(dev),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_native": native_bf16(dev),
        "train_precision_auto": str(autocast_dtype("auto", dev) or "float32"),
        # The project trains and renders eagerly: no torch.compile call anywhere in pipeline/ or models/.
        "torch_compile": {"used": False, "available": hasattr(torch, "compile")},
        "packages": {k: v or "missing" for k, v in package_versions(PACKAGES).items()},
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env.update(
            cuda_device=torch.cuda.get_device_name(dev),
            cuda_capability=f"{props.major}.{props.minor}",
            cuda_memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
    for key in ("fid", "facenet"):
        look = find_weight(key)
        env[f"{key}_weights"] = str(look.path) if look.path else f"missing (looked: {'; '.join(look.tried)})"
    return env


def default_weights_dir() -> None:
    """Point $FERSYNTH_WEIGHTS_DIR at a shared/weights folder beside or above the checkout (as the tests do)."""
    from pipeline.weights import WEIGHTS_DIR_ENV

    if os.environ.get(WEIGHTS_DIR_ENV):
        return
    for cand in (REPO / "shared" / "weights", REPO.parent / "shared" / "weights"):
        if cand.is_dir():
            os.environ[WEIGHTS_DIR_ENV] = str(cand)
            return


# --------------------------------------------------------------------------- configs and the CLI


def scaled_stages(stages: list[dict[str, Any]], scale: int) -> list[dict[str, Any]]:
    """Every stage's steps, fade_steps and decay_steps times `scale` (batch sizes and resolutions kept)."""
    keys = ("steps", "fade_steps", "decay_steps")
    return [{k: (v * scale if k in keys else v) for k, v in s.items()} for s in stages]


def write_run_config(spec: RunSpec, s: Session, data_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The run's own config file in --work: the recipe with its data folder, run folder, device and schedule."""
    import yaml

    from pipeline.config import config_to_dict, load_config

    raw = yaml.safe_load(spec.base.read_text(encoding="utf-8"))
    recipe = load_config(spec.base)  # the defaults of fields the recipe leaves out
    raw.setdefault("data", {})["root"] = str(data_dir / Path(recipe.data.root).name)
    train = raw.setdefault("train", {})
    train["stages"] = scaled_stages(config_to_dict(recipe.train)["stages"], spec.scale)
    if spec.scale > 1:
        # As many checkpoints as the 1x run: each one copies every network to the host.
        train["checkpoint_every"] = recipe.train.checkpoint_every * spec.scale
    train["out_dir"] = str(s.work / "runs" / spec.name)
    if s.device != "auto":
        train["device"] = s.device
        raw.setdefault("generate", {})["device"] = s.device
        raw.setdefault("quality", {})["device"] = s.device
    path = s.work / "configs" / f"{spec.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    load_config(path)  # fails here, before any work, if the stretched schedule is not a valid config
    return path, raw


def run_cli(args: list[str], log: Path, timeout: float) -> int:
    """`fersynth ARGS` in a child process of this interpreter and checkout; its output goes to `log`.

    The child gets its own process group, so a timeout also ends the workers it started (data make).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *map(str, args)],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise StepFailed(f"timed out after {timeout:.0f} s; log tail: {log_tail(log)}") from None


def log_tail(log: Path, n: int = 1500) -> str:
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    return " ".join(text[-n:].split())


def cli_step(s: Session, args: list[str], log_name: str, ok_codes: tuple[int, ...] = (0,)) -> int:
    """Run a CLI step with the time left as its timeout; raise StepFailed on any other exit code."""
    log = s.work / "logs" / f"{log_name}.log"
    code = run_cli(args, log, s.remaining())
    if code not in ok_codes:
        raise StepFailed(f"exit code {code}; log tail: {log_tail(log)}")
    return code


# --------------------------------------------------------------------------- the steps


def make_data(s: Session, cfg_path: Path, root: Path) -> dict[str, Any]:
    """`fersynth data make` into `root`, unless a finished dataset is already there (then reused, not timed)."""
    if (root / "labels.parquet").is_file():
        return {"root": str(root), "made": False}
    args = ["data", "make", "--config", cfg_path, "--out", root]
    if s.mode.data_workers is not None:
        args += ["--workers", s.mode.data_workers]
    start = time.perf_counter()
    cli_step(s, args, f"data-{root.name}")
    seconds = time.perf_counter() - start
    import pandas as pd

    n = len(pd.read_parquet(root / "labels.parquet"))
    out = {"root": str(root), "made": True, "images": n, "images_per_s_with_start": round(n / seconds, 1)}
    # The command's own time, without the interpreter's start: "made N images of ... in X s".
    inner = logged_seconds(s.work / "logs" / f"data-{root.name}.log", r"made \d+ images of .* in ([\d.]+) s")
    if inner:
        out.update(seconds=inner, images_per_s=round(n / inner, 1))
    return out


def logged_seconds(log: Path, pattern: str) -> float | None:
    """The seconds a command printed about itself (the last match of `pattern` in its log), if any."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    found = re.findall(pattern, text)
    return float(found[-1]) if found and float(found[-1]) > 0 else None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_train_steps(s: Session, cfg_path: Path) -> dict[str, Any]:
    """Seconds per GAN step at each resolution of a recipe (as benchmarks/bench_train.py), in this process.

    The judges train for 2 steps only: their quality does not change a step's cost.
    """
    import torch

    from pipeline.config import load_config
    from pipeline.train.loop import Trainer

    with tempfile.TemporaryDirectory(dir=s.work) as tmp:
        cfg = load_config(cfg_path, [f"train.out_dir={tmp}", "train.judge_steps=2"])
        trainer = Trainer(cfg)
        trainer.run_judges()
        per_res: dict[str, Any] = {}
        for i, stage in enumerate(cfg.train.stages):
            trainer.stage_idx = i  # the stage's batch size
            trainer.train_step(stage.resolution, 1.0)  # warm-up (cuDNN picks its algorithms here)
            _sync(trainer.device)
            start = time.perf_counter()
            for _ in range(s.mode.probe_steps):
                trainer.train_step(stage.resolution, 1.0)
            _sync(trainer.device)
            per = (time.perf_counter() - start) / s.mode.probe_steps
            batch = stage.batch_size or cfg.train.batch_size
            per_res[str(stage.resolution)] = {
                "s_per_step": round(per, 5),
                "batch": batch,
                "images_per_s": round(batch / per, 1),
            }
        precision = str(trainer.amp_dtype or "float32")
        del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"precision": precision, "per_resolution": per_res}


def predict_train_s(stages: list[dict[str, Any]], probe: dict[str, Any], overhead_s: float) -> float:
    """GAN steps times the probed cost of a step at their resolution, plus judges and finalisation."""
    per = probe["per_resolution"]
    return overhead_s + sum(st["steps"] * per[str(st["resolution"])]["s_per_step"] for st in stages)


def train(s: Session, spec: RunSpec, cfg_path: Path) -> dict[str, Any]:
    """`fersynth train` from an empty run folder (a left-over one would resume and time nothing)."""
    run_dir = s.work / "runs" / spec.name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    cli_step(s, ["train", "--config", cfg_path, "--out", run_dir], f"train-{spec.name}")
    final = run_dir / "checkpoints" / "final.pt"
    if not final.is_file():
        raise StepFailed(f"training ended without {final}")
    return {"checkpoint": str(final), "train_s": round(time.perf_counter() - start, 1)}


def evaluate(s: Session, spec: RunSpec, ckpt: Path) -> dict[str, Any]:
    """`fersynth evaluate` on the test identities; the numeric metrics and per-stage seconds of eval.json."""
    out = s.work / "eval" / spec.name
    cli_step(s, ["evaluate", ckpt, "--out", out], f"evaluate-{spec.name}")
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    metrics = {k: v for k, v in result["metrics"].items() if isinstance(v, int | float)}
    return {
        "step": result["step"],
        "metrics": metrics,
        "stage_seconds": result["stage_seconds"],
        "warnings": result["warnings"],
    }


def _images_per_s(fn: Callable[[], Any], batch: int, device: Any, min_seconds: float) -> float:
    """Images/s of `fn` (one batch per call): two warm-up calls, then calls until `min_seconds` have passed."""
    for _ in range(2):
        fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    _sync(device)
    return round(calls * batch / (time.perf_counter() - start), 1)


def time_generator(s: Session, ckpt: Path) -> dict[str, Any]:
    """The EMA generator alone (random codes, no photo, no checks, no I/O): images/s in float32 and bf16 autocast."""
    import torch

    from pipeline.core.device import resolve_device
    from pipeline.core.networks import native_bf16
    from pipeline.core.trained import load_trained

    dev = resolve_device(s.device)
    cfg, nets, _ = load_trained(ckpt, device=dev)
    g = nets.generator_ema
    res, b = cfg.model.max_resolution, s.mode.render_batch
    rng = torch.Generator().manual_seed(0)
    w_id = torch.randn(b, g.id_dim, generator=rng).to(dev)
    w_exp = torch.randn(b, g.exp_dim, generator=rng).to(dev)
    photo = torch.zeros(b, 3, res, res, device=dev) if g.reads_photo else None

    def render() -> Any:
        return g(w_id, w_exp, res, 1.0, source=photo)

    out: dict[str, Any] = {"resolution": res, "batch": b}
    with torch.inference_mode():
        out["fp32_images_per_s"] = _images_per_s(render, b, dev, s.mode.render_seconds)
        if native_bf16(dev):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                out["bf16_images_per_s"] = _images_per_s(render, b, dev, s.mode.render_seconds)
    return out


def time_generate(s: Session, spec: RunSpec, ckpt: Path) -> dict[str, Any]:
    """A full `fersynth generate`: render, PNGs, every per-image check and every dataset gate, then the verdict.

    A rejection (exit 1) is a finished run too: the gates ran and said no.
    """
    from manifests.layout import REJECTED_MARKER
    from manifests.reader import read_dataset_meta, read_manifest

    out = s.work / "datasets" / spec.name
    if out.exists():
        shutil.rmtree(out)
    sets = [a for kv in s.mode.generate_sets for a in ("--set", kv)]
    start = time.perf_counter()
    code = cli_step(
        s, ["generate", "--checkpoint", ckpt, "--out", out, "--name", "bench", *sets], f"generate-{spec.name}", (0, 1)
    )
    seconds = time.perf_counter() - start
    where = out / "bench" if code == 0 else out / ".staging" / "bench"
    if code == 1 and not (where / REJECTED_MARKER).is_file():
        raise StepFailed(
            f"exit code 1 without a verdict; log tail: {log_tail(s.work / 'logs' / f'generate-{spec.name}.log')}"
        )
    df = read_manifest(where, columns=["all_pass"])
    meta = read_dataset_meta(where)
    gates = {g["name"]: {"value": g.get("value"), "passed": g["passed"]} for g in meta.get("gates", [])}
    result = {
        "status": meta.get("status"),
        "images": len(df),
        "pass_rate": round(float(df["all_pass"].mean()), 4),
        "seconds_with_start": round(seconds, 1),
        "images_per_s_with_start": round(len(df) / seconds, 1),
        "gates": gates,
    }
    # The command's own time (plan, render, checks, FID/KID, usefulness, report, publish), without the start.
    log = s.work / "logs" / f"generate-{spec.name}.log"
    inner = logged_seconds(log, r"\d+ images in \d+ shard\(s\) .* in ([\d.]+) s")
    if inner:
        result.update(seconds=inner, images_per_s=round(len(df) / inner, 1))
    return result


def export_half(s: Session, spec: RunSpec, ckpt: Path) -> dict[str, Any]:
    """`fersynth export --half` into --out when it fits what comes back; it must load as data only."""
    import torch

    dst = s.work / "exports" / f"{spec.name}.pt"
    dst.parent.mkdir(parents=True, exist_ok=True)
    cli_step(s, ["export", ckpt, dst, "--half"], f"export-{spec.name}")
    loaded = torch.load(dst, map_location="cpu", weights_only=True)
    halves = sum(t.dtype == torch.float16 for sd in loaded["nets"].values() for t in sd.values())
    size = dst.stat().st_size
    kept = admit_to_out(s.out, dst)
    return {"bytes": size, "float16_tensors": int(halves), "path": str(kept), "in_out": kept.parent == s.out}


def admit_to_out(out: Path, path: Path) -> Path:
    """Move `path` into `out` if `out` stays within the limits afterwards; else leave it where it is.

    figures.json and gpu_run.log keep their places (a MiB each: the log's cap, and room for the figures).
    """
    others = [p for p in out.iterdir() if p.is_file() and p.name not in (FIGURES, LOG)]
    size = path.stat().st_size
    total = sum(p.stat().st_size for p in others) + size + 2 * LOG_MAX_BYTES
    if len(others) + 3 > OUT_MAX_FILES or size > OUT_MAX_FILE_BYTES or total > OUT_MAX_TOTAL_BYTES:
        return path
    return Path(shutil.move(path, out / path.name))


def out_limits(out: Path) -> dict[str, Any]:
    """Whether --out is within what a device machine hands back."""
    files = [p for p in out.rglob("*") if p.is_file()]
    sizes = [p.stat().st_size for p in files]
    return {
        "files": len(files),
        "largest_bytes": max(sizes, default=0),
        "total_bytes": sum(sizes),
        "ok": len(files) <= OUT_MAX_FILES
        and max(sizes, default=0) <= OUT_MAX_FILE_BYTES
        and sum(sizes) <= OUT_MAX_TOTAL_BYTES,
    }


# --------------------------------------------------------------------------- the session


def run_one(
    s: Session,
    spec: RunSpec,
    cfg_path: Path,
    stages: list[dict[str, Any]],
    probe: dict[str, Any] | None,
    first_at_res: bool,
) -> None:
    """Train one run (if it fits), then evaluate, export and time rendering with its checkpoint."""
    run = s.figures["runs"][spec.name]
    predicted = None
    if probe is not None:
        gan_s = predict_train_s(stages, probe, 0.0)
        predicted = gan_s + s.figures.get("train_overhead_s", s.mode.train_overhead_s)
        run["predicted_gan_s"] = round(gan_s, 1)
        # The run must also leave time for its evaluation, export and render timing.
        res = s.step(f"train {spec.name}", lambda: train(s, spec, cfg_path), predicted + s.mode.after_train_s)
    else:
        res = s.step(f"train {spec.name}", lambda: train(s, spec, cfg_path))
    if res is None:
        return
    run.update(res)
    if probe is not None:  # what judges, calibration and checkpoints took: the next prediction uses it
        s.figures["train_overhead_s"] = round(max(0.0, res["train_s"] - run["predicted_gan_s"]), 1)
    ckpt = Path(res["checkpoint"])
    for key, fn in (
        ("evaluate", lambda: evaluate(s, spec, ckpt)),
        ("export", lambda: export_half(s, spec, ckpt)),
        ("render", lambda: time_generator(s, ckpt)),
    ):
        got = s.step(f"{key} {spec.name}", fn)
        if got is not None:
            run[key] = got
    if first_at_res:  # one full generation per resolution: the gates cost the same at any schedule
        got = s.step(f"generate {spec.name}", lambda: time_generate(s, spec, ckpt))
        if got is not None:
            run["generate"] = got
    s.save()


def session(s: Session, specs: list[RunSpec], data_dir: Path) -> int:
    """Every step in order; returns the number of failed steps (skipped ones are not failures)."""
    s.figures.update(
        script="benchmarks/gpu_run.py",
        mode=s.mode.name,
        argv=sys.argv[1:],
        started_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        budget_s=s.budget_s,
        runs={},
    )
    env = s.step("environment", lambda: environment(s.device))
    s.figures["environment"] = env
    if env:
        s.say(
            f"torch {env['torch']} (CUDA {env['torch_cuda']}), device {env.get('cuda_device', env['device'])}, "
            f"bf16 native {env['bf16_native']}, torch.compile used: {env['torch_compile']['used']}"
        )
        s.say("packages: " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()))
        s.say(f"FID weights: {env['fid_weights']}")
    configs: dict[str, tuple[Path, list[dict[str, Any]]]] = {}
    for spec in specs:
        path, raw = write_run_config(spec, s, data_dir)
        configs[spec.name] = (path, raw["train"]["stages"])
        s.figures["runs"][spec.name] = {
            "config": spec.base.name,
            "scale": spec.scale,
            "data": raw["data"]["root"],
            "stages": raw["train"]["stages"],
        }
    # Data, then one step-time probe per recipe (the same at any schedule), before any run.
    probes: dict[Path, dict[str, Any] | None] = {}
    for spec in specs:
        path, _ = configs[spec.name]
        root = Path(s.figures["runs"][spec.name]["data"])
        if root.name not in s.figures.setdefault("data", {}):
            got = s.step(f"data {root.name}", lambda p=path, r=root: make_data(s, p, r))
            s.figures["data"][root.name] = got or {"root": str(root), "made": False, "failed": True}
        if spec.base not in probes:
            probes[spec.base] = s.step(f"probe {spec.base.stem}", lambda p=path: probe_train_steps(s, p))
            if probes[spec.base] is not None:
                s.figures.setdefault("train_step", {})[spec.base.stem] = probes[spec.base]
    seen_res: set[int] = set()
    for spec in specs:
        path, stages = configs[spec.name]
        res = max(st["resolution"] for st in stages)
        run_one(s, spec, path, stages, probes[spec.base], res not in seen_res)
        seen_res.add(res)
    failed = sum(st["status"] == "failed" for st in s.figures["steps"])
    s.figures["failed_steps"] = failed
    s.figures["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    s.say(f"done: {failed} failed step(s)")
    s.save()
    # Counted with figures.json as last written: the one rewrite below changes its size by a few bytes only.
    s.figures["out_limits"] = out_limits(s.out)
    s.save()
    return failed


@contextlib.contextmanager
def work_folder(work: Path | None) -> Iterator[Path]:
    """--work, or a temporary folder removed afterwards (data, runs and datasets are not figures)."""
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        yield work.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="gpu-run-") as tmp:
        yield Path(tmp)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="figures and exports (default $OUT)")
    ap.add_argument("--work", type=Path, help="data, runs, evaluations, datasets (default: a temporary folder)")
    ap.add_argument(
        "--data-dir",
        type=Path,
        help="where the procedural datasets are made or reused (default: data/ of the checkout; --tiny: WORK/data)",
    )
    ap.add_argument("--tiny", action="store_true", help="configs/tiny.yaml: every step in about 40 s on a CPU")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--runs", nargs="+", type=RunSpec.parse, help="CONFIG or CONFIGxN, in order (default: the mode's)")
    ap.add_argument("--budget-s", type=float, help="wall-clock budget; runs predicted to overrun it are skipped")
    args = ap.parse_args(argv)
    if args.out is None:
        ap.error("--out is required when $OUT is not set")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = TINY if args.tiny else GPU
    default_weights_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.iterdir()):
        print(f"warning: {args.out} is not empty; its files count against the limits", file=sys.stderr)
    specs = args.runs or [RunSpec.parse(r) for r in mode.runs]
    with work_folder(args.work) as work:
        data_dir = (args.data_dir or (work / "data" if args.tiny else REPO / "data")).resolve()
        s = Session(args.out.resolve(), work, mode, args.device, args.budget_s or mode.budget_s)
        failed = session(s, specs, data_dir)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
