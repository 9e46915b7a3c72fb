"""Ground-truth evaluation of a checkpoint on held-out identities.

For every test identity, every source image (neutral and each expression at full intensity) is
re-rendered with every target expression code. The procedural data has the exact true image of
that identity, in that session (same pose, light, background), with the target expression, so
each swap is scored against truth: SSIM/PSNR over the whole image and L1/PSNR/SSIM over the pixels
the expression changes and the rest (`pipeline.quality.regions`), plus expression accuracy (also by
source x target expression, the leakage table) and identity top-1 from judges trained here with
their own seed (never the networks the GAN was optimised against).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Config, config_to_dict
from pipeline.core.codes import expression_target
from pipeline.core.data import TrainData, load_split
from pipeline.core.networks import Networks
from pipeline.core.trained import load_trained
from pipeline.expressions import EXPRESSIONS
from pipeline.generate.plan import novel_identity_codes
from pipeline.io_utils import atomic_path, atomic_write_json, atomic_write_text
from pipeline.judges import judge_accuracy, load_eval_judges
from pipeline.quality.identity_consistency import identity_consistency
from pipeline.quality.leakage import leak_heatmap, leak_spread, leak_table
from pipeline.quality.outside_judge import load_outside_judge
from pipeline.quality.regions import changed_region, region_keys, region_scores
from pipeline.quality.ssim import psnr_batch, ssim_batch
from pipeline.swaps import draws_over_photo, render_from_codes, render_over_photo
from pipeline.train.grids import compose_grid, save_png, to_uint8


class BatchScores:
    """The registry of per-batch metrics: score arrays gathered under a name, reduced once at the end."""

    def __init__(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = defaultdict(list)

    def add(self, **scores: np.ndarray | float) -> None:
        for name, values in scores.items():
            self._parts[name].append(np.atleast_1d(np.asarray(values)))

    def __contains__(self, name: str) -> bool:
        return name in self._parts

    def all(self, name: str) -> np.ndarray:
        return np.concatenate(self._parts[name])

    def mean(self, name: str) -> float:
        return float(self.all(name).mean())


@dataclass
class _Setup:
    """What scoring a batch of sources reads: the model, the test split, the judges and the targets."""

    cfg: Config
    nets: Networks
    test: TrainData
    clf: torch.nn.Module
    emb: torch.nn.Module
    outside: torch.nn.Module  # the outside expression judge (another architecture, sharp photos only)
    targets: torch.Tensor  # one full-intensity code per class
    top: dict[int, int]  # each class's top intensity code in the split
    protos: torch.Tensor  # unit mean eval-embedding of each test identity's real images
    composited: bool  # swaps drawn over their source photo (and the plain RGB scored beside them)
    n_cls: int
    full: int
    device: torch.device


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint: Path,
    out_dir: Path | None = None,
    data_root: Path | None = None,
    split: str = "test",
    overrides: list[str] | None = None,
    progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    checkpoint = Path(checkpoint)
    cfg, nets, ckpt = load_trained(checkpoint, overrides)
    device = next(nets.generator.parameters()).device
    root = Path(data_root or cfg.data.root)
    full, n_cls = cfg.model.max_resolution, cfg.model.num_classes
    out = Path(out_dir or checkpoint.parent.parent / "eval")
    out.mkdir(parents=True, exist_ok=True)
    test = load_split(root, full, split, cfg.data.cache_dir)
    if int(test.labels.max()) >= n_cls:
        raise ValueError(
            f"{root}: split {split!r} has expression classes the model does not know (model.num_classes={n_cls})"
        )
    clf, emb = load_eval_judges(cfg, ckpt, device)
    outside, outside_stats = load_outside_judge(
        root, full, n_cls, device, cfg.quality.outside_judge_steps, cfg.data.cache_dir
    )
    codes = {k: v.to(device) for k, v in ckpt["codes"].items()}
    targets = expression_target(codes, torch.arange(n_cls, device=device), torch.ones(n_cls, device=device))
    # Sources: per identity and session, the neutral image and each expression at its top intensity.
    top = {c: int(test.intensity_code[test.labels == c].max()) for c in range(n_cls) if (test.labels == c).any()}
    src_rows = [i for i in range(test.n) if top.get(int(test.labels[i])) == int(test.intensity_code[i])]
    src = torch.tensor(src_rows)
    real_emb = _embed_all(emb, test, torch.arange(test.n), full, device, batch_size)
    protos = torch.zeros(len(test.identity_names), real_emb.shape[1], device=device)
    protos.index_add_(0, test.identity.to(device), real_emb)
    protos = torch.nn.functional.normalize(protos, dim=1)
    # Swaps are drawn over their source photo as the product draws real identities (generate.composite).
    composited = draws_over_photo(cfg.generate.composite, nets.generator_ema.has_mask)
    setup = _Setup(cfg, nets, test, clf, emb, outside, targets, top, protos, composited, n_cls, full, device)

    scores = BatchScores()
    renders_u8: dict[tuple[int, int], np.ndarray] = {}
    for start in range(0, len(src), batch_size):
        _score_sources(setup, src[start : start + batch_size], scores, renders_u8)
        if progress:
            progress("evaluate", min(start + batch_size, len(src)), len(src), {})

    judges_on_real = {
        "judge_expr_acc_real": judge_accuracy(clf, test, device),
        "judge_id_top1_real": float((((real_emb @ protos.T).argmax(1)).cpu() == test.identity).float().mean()),
        "outside_judge_acc_real": judge_accuracy(outside, test, device),
        **{f"outside_judge_{k}": v for k, v in outside_stats.items()},
        **_truth_readings({"expr_acc": clf, "expr_acc_outside": outside}, test, src, n_cls, full, device, batch_size),
    }
    metrics = _summarise(setup, scores, judges_on_real)
    per_class = scores.all("correct").reshape(-1, n_cls).mean(0)
    metrics.update({f"expr_acc_{name}": float(v) for name, v in zip(EXPRESSIONS[:n_cls], per_class, strict=True)})
    per_class = scores.all("correct_outside").reshape(-1, n_cls).mean(0)
    metrics.update(
        {f"expr_acc_outside_{name}": float(v) for name, v in zip(EXPRESSIONS[:n_cls], per_class, strict=True)}
    )
    metrics.update(_lower_intensity_scores(nets, clf, codes, test, src, top, full, device, batch_size, cfg))
    metrics.update(_novel_identity_scores(setup, codes, real_emb, batch_size))
    warnings = _collapse_warnings(metrics, scores, n_cls)
    leakage = _leakage(scores, n_cls, out / "leak_table.png")
    metrics.update(leakage["summary"])

    grid = _swap_grid(test, src_rows, renders_u8, top, n_cls, full, device, out / "swap_grid.png")
    result = {
        "checkpoint": str(checkpoint),
        "step": int(ckpt["global_step"]),
        "data": str(root),
        "split": split,
        "metrics": metrics,
        "warnings": warnings,
        "grid": str(grid),
        "leak_table": leakage,
        "config": config_to_dict(cfg),
        # Training time per GAN stage as the checkpoint recorded it (judges and finalisation excluded).
        "stage_seconds": {
            int(s["resolution"]): round(float(s["seconds"]))
            for s in json.loads(ckpt.get("stage_metrics") or "[]")
            if "seconds" in s
        },
    }
    atomic_write_json(out / "eval.json", result)
    report = out / "eval.md"
    atomic_write_text(report, _markdown(result))
    result["report"] = str(report)
    return result


def _score_sources(
    s: _Setup, rows: torch.Tensor, scores: BatchScores, renders_u8: dict[tuple[int, int], np.ndarray]
) -> None:
    """Every source in `rows` swapped to every target expression, scored into `scores`."""
    test, nets, n_cls, full, device = s.test, s.nets, s.n_cls, s.full, s.device
    x = test.batch(rows, full, 1.0, device)
    w_id, w_exp = nets.encoder(x)
    x_u8 = to_uint8(x)
    scores.add(rec_ssim=ssim_batch(to_uint8(nets.generator_ema(w_id, w_exp, full, 1.0)), x_u8, data_range=255))
    n = len(rows)
    x_rep = x.repeat_interleave(n_cls, 0)
    ids, exps = w_id.repeat_interleave(n_cls, 0), s.targets.repeat(n, 1)
    fake, raw, mask = _swap(nets, s.cfg, ids, exps, w_exp.repeat_interleave(n_cls, 0), x_rep)
    fake = fake.clamp(-1, 1)
    tgt = torch.arange(n_cls).repeat(n)
    src_rep = rows.repeat_interleave(n_cls)
    scores.add(
        correct=(s.clf(fake).argmax(1).cpu() == tgt).numpy(),
        correct_outside=(s.outside(fake).argmax(1).cpu() == tgt).numpy(),
        src_expr=test.labels[src_rep].numpy(),
        tgt_expr=tgt.numpy(),
    )
    if s.composited:
        raw = raw.clamp(-1, 1)
        scores.add(raw_correct=(s.clf(raw).argmax(1).cpu() == tgt).numpy())
    sims = s.emb.embed(fake) @ s.protos.T
    own = test.identity[src_rep].to(device)
    scores.add(
        id_hit=(sims.argmax(1) == own).cpu().numpy(), id_cos=sims.gather(1, own[:, None]).squeeze(1).cpu().numpy()
    )
    fake_u8 = to_uint8(fake)
    for j, (r, t) in enumerate(zip(src_rep.tolist(), tgt.tolist(), strict=True)):
        if len(renders_u8) < 2000:
            renders_u8[(r, t)] = fake_u8[j]
    truth_rows = torch.tensor(
        [
            test.truth_key.get((int(test.identity[r]), int(test.session[r]), t, s.top.get(t, 100)), -1)
            for r, t in zip(src_rep.tolist(), tgt.tolist(), strict=True)
        ]
    )
    have = truth_rows >= 0
    if not have.any():
        return
    # The truths are loaded once; every score below reads them.
    truth = test.batch(truth_rows[have], full, 1.0, device)
    truth_u8, have_np, have_d = to_uint8(truth), have.numpy(), have.to(device)
    copy_u8 = np.repeat(x_u8, n_cls, axis=0)[have_np]
    where = changed_region(truth, x_rep[have_d])
    scores.add(
        sw_ssim=ssim_batch(fake_u8[have_np], truth_u8, data_range=255),
        sw_psnr=psnr_batch(fake_u8[have_np], truth_u8, data_range=255),
        changed_share=where.flatten(1).mean(1).cpu().numpy(),
    )
    renders = {"": fake_u8[have_np], "_copy_source": copy_u8}
    if s.composited:
        renders["_raw"] = to_uint8(raw)[have_np]
    _score_regions(scores, renders, truth_u8, where[:, 0].bool().cpu().numpy())
    if s.composited:
        scores.add(raw_ssim=ssim_batch(renders["_raw"], truth_u8, data_range=255))
        # How far the mask opens where the truth differs from the source, and elsewhere: a
        # decisive mask is near 1 and 0; a blend of the source and the RGB is near 0.5.
        m = mask[have_d]
        scores.add(
            mask_changed=float((m * where).sum() / where.sum().clamp_min(1.0)),
            mask_kept=float((m * (1 - where)).sum() / (1 - where).sum().clamp_min(1.0)),
        )
    # Reference: the unchanged source scored against the same truths. SSIM rewards getting
    # the face, pose and light right more than the expression, so read ssim_truth beside it.
    scores.add(copy_ssim=ssim_batch(copy_u8, truth_u8, data_range=255))
    changed = (test.labels[src_rep] != tgt)[have]  # among the rows that have a truth
    if changed.any():
        changed_d = changed.to(device)
        scores.add(transfer=expression_transfer(fake[have_d][changed_d], x_rep[have_d][changed_d], truth[changed_d]))
    if have.all():
        # Collapse check: how much renders of one source differ across targets vs the truth.
        scores.add(
            spread_fake=fake.reshape(n, n_cls, -1).std(1).mean(1).cpu().numpy(),
            spread_true=truth.reshape(n, n_cls, -1).std(1).mean(1).cpu().numpy(),
        )


def _score_regions(
    scores: BatchScores, renders: dict[str, np.ndarray], truth_u8: np.ndarray, where: np.ndarray
) -> None:
    """L1, PSNR and SSIM over the changed region and the rest, per render kind (key suffix)."""
    for suffix, images in renders.items():
        scores.add(**{f"{k}{suffix}": v for k, v in region_scores(images, truth_u8, where).items()})


def _region_metrics(scores: BatchScores) -> dict[str, float]:
    """Means of the region scores; NaNs (a swap to the source's own expression changes no pixel) left out."""
    out = {}
    for suffix in ("", "_raw", "_copy_source"):
        for key in region_keys():
            if f"{key}{suffix}" in scores:
                values = scores.all(f"{key}{suffix}")
                values = values[~np.isnan(values)]
                out[f"{key}{suffix}"] = float(values.mean()) if values.size else float("nan")
    if "changed_share" in scores:
        out["changed_share"] = scores.mean("changed_share")
    return out


def _leakage(scores: BatchScores, n_cls: int, heatmap: Path) -> dict[str, Any]:
    """The source x target expression accuracy table, its summary and its heatmap picture."""
    acc, count = leak_table(scores.all("src_expr"), scores.all("tgt_expr"), scores.all("correct"), n_cls)
    spread = leak_spread(acc)
    names = list(EXPRESSIONS[:n_cls])
    with atomic_path(heatmap) as tmp:
        leak_heatmap(acc, names).savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    cells = [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in acc]
    summary = {"leak_spread_mean": float(np.nanmean(spread)), "leak_spread_max": float(np.nanmax(spread))}
    return {
        "rows": "source expression",
        "columns": "target expression",
        "expressions": names,
        "accuracy": cells,
        "count": count.tolist(),
        "spread_per_target": {
            n: None if np.isnan(v) else round(float(v), 4) for n, v in zip(names, spread, strict=True)
        },
        "heatmap": str(heatmap),
        "summary": summary,
    }


def _summarise(s: _Setup, scores: BatchScores, judges_on_real: dict[str, float]) -> dict[str, Any]:
    """The headline figures of the gathered scores (the names and order eval.json has always had)."""
    metrics: dict[str, Any] = {
        "n_test_identities": len(s.test.identity_names),
        "n_swaps": len(scores.all("correct")),
        "expr_acc": scores.mean("correct"),
        "expr_acc_outside": scores.mean("correct_outside"),
        "id_top1": scores.mean("id_hit"),
        "id_cosine": scores.mean("id_cos"),
        "recon_ssim": scores.mean("rec_ssim"),
        **judges_on_real,
    }
    if "sw_ssim" in scores:
        metrics["ssim_truth"] = scores.mean("sw_ssim")
        metrics["psnr_truth"] = float(np.mean(np.minimum(scores.all("sw_psnr"), 100.0)))
        metrics["ssim_truth_copy_source"] = scores.mean("copy_ssim")
    if "transfer" in scores:
        metrics["expression_transfer"] = scores.mean("transfer")
    if s.composited:  # the renders a novel identity (no source photo) gets
        metrics["expr_acc_raw"] = scores.mean("raw_correct")
        if "raw_ssim" in scores:
            metrics["ssim_truth_raw"] = scores.mean("raw_ssim")
            metrics["mask_open_changed"] = scores.mean("mask_changed")
            metrics["mask_open_kept"] = scores.mean("mask_kept")
    metrics.update(_region_metrics(scores))
    return metrics


# The three kinds of face the novel-identity figures compare, and their metric-name suffixes.
FACE_KINDS = (
    ("real photos", "photos"),
    ("real identities' codes, no photo", "codes"),
    ("novel identities", "novel"),
)


@torch.no_grad()
def _novel_identity_scores(
    s: _Setup, codes: dict[str, torch.Tensor], real_emb: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """Expression accuracy and identity consistency of novel identities (sampled codes, no photo, no truth).

    Beside them, on the same scale: the test identities' real photos (each at every expression in one
    session) and their photo-encoded codes rendered by the same plain generator. `real_emb`: the
    evaluation embeddings of every test image, already computed for the swaps' identity scores.
    """
    test, n_cls, full, device = s.test, s.n_cls, s.full, s.device
    photo_sets = []
    for ident in range(len(test.identity_names)):
        for sess in sorted(set(test.session[test.identity == ident].tolist())):
            rows = [test.truth_key.get((ident, sess, c, s.top.get(c, -1)), -1) for c in range(n_cls)]
            if min(rows) >= 0:
                photo_sets.append(rows)
                break
    if len(photo_sets) < 2:
        return {}
    photos = torch.tensor(photo_sets).flatten()
    neutral = torch.tensor([rows[0] for rows in photo_sets])
    photo_ids = torch.cat(
        [
            s.nets.encoder(test.batch(neutral[i : i + batch_size], full, 1.0, device))[0]
            for i in range(0, len(neutral), batch_size)
        ]
    )
    novel = novel_identity_codes(codes, len(photo_sets), seed=0)
    novel_ids = torch.from_numpy(np.stack(list(novel.values()))).to(device=device, dtype=photo_ids.dtype)

    def judge(
        images_of: Callable[[torch.Tensor], torch.Tensor], n_items: int, known_emb: torch.Tensor | None = None
    ) -> dict[str, float]:
        labels, labels_outside, emb = [], [], []
        for i in range(0, n_items, batch_size):
            x = images_of(torch.arange(i, min(i + batch_size, n_items)))
            labels.append(s.clf(x).argmax(1).cpu())
            labels_outside.append(s.outside(x).argmax(1).cpu())
            if known_emb is None:
                emb.append(s.emb.embed(x).cpu())
        all_emb = known_emb.cpu() if known_emb is not None else torch.cat(emb)
        target = torch.arange(n_cls).repeat(n_items // n_cls)
        out = identity_consistency(all_emb.reshape(n_items // n_cls, n_cls, -1))
        return {
            "expr_acc": float((torch.cat(labels) == target).float().mean()),
            "expr_acc_outside": float((torch.cat(labels_outside) == target).float().mean()),
            **{f"id_{k}": v for k, v in out.items()},
        }

    g, composite, neutral = s.nets.generator_ema, s.cfg.generate.composite, codes["exp_neutral"].to(device)

    def render(ids: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def draw(j: torch.Tensor) -> torch.Tensor:
            return render_from_codes(g, composite, ids[j // n_cls], s.targets[j % n_cls], neutral, full).clamp(-1, 1)

        return draw

    kinds = {
        "photos": judge(
            lambda j: test.batch(photos[j], full, 1.0, device), len(photos), real_emb[photos.to(real_emb.device)]
        ),
        "codes": judge(render(photo_ids), len(photos)),
        "novel": judge(render(novel_ids), len(photos)),
    }
    return {f"{fig}_{kind}": v for kind, figs in kinds.items() for fig, v in figs.items()}


def _collapse_warnings(metrics: dict[str, Any], scores: BatchScores, n_cls: int) -> list[str]:
    warnings = []
    if "spread_fake" in scores:
        ratio = float(scores.all("spread_fake").mean() / max(scores.all("spread_true").mean(), 1e-8))
        metrics["expression_spread_ratio"] = ratio
        if ratio < 0.25:
            warnings.append(
                f"expression collapse: renders of one source vary {ratio:.2f}x as much as the truth across target expressions"
            )
    if metrics["expr_acc"] < 1.5 / n_cls:
        warnings.append(
            f"expression collapse: judge accuracy of swaps {metrics['expr_acc']:.2f} is near chance ({1 / n_cls:.2f})"
        )
    return warnings


def _lower_intensity_scores(nets, clf, codes, test: TrainData, src, top, full, device, bs, cfg) -> dict[str, float]:
    """Expression accuracy and SSIM to truth of swaps to every intensity below a class's top one.

    The same sources as the main scores, each rendered with every expressive class at each lower
    intensity the test split has (procedural: 0.5); neutral has no intensity and is left out.
    """
    out: dict[str, float] = {}
    levels = sorted({int(v) for v in test.intensity_code.tolist()} - {0})
    for level in levels:
        classes = [c for c, t in top.items() if c and level < t and (test.labels == c).any()]
        if not classes:
            continue
        cls = torch.tensor(classes, device=device)
        targets = expression_target(codes, cls, torch.full((len(classes),), level / 100, device=device))
        scores = BatchScores()
        for start in range(0, len(src), bs):
            rows = src[start : start + bs]
            x = test.batch(rows, full, 1.0, device)
            w_id, w_exp = nets.encoder(x)
            k = len(classes)
            ids, exps, srcs = w_id.repeat_interleave(k, 0), w_exp.repeat_interleave(k, 0), x.repeat_interleave(k, 0)
            fake = _swap(nets, cfg, ids, targets.repeat(len(rows), 1), exps, srcs)[0].clamp(-1, 1)
            tgt = cls.repeat(len(rows))
            scores.add(correct=(clf(fake).argmax(1) == tgt).cpu().numpy())
            src_rep = rows.repeat_interleave(len(classes))
            truth_rows = torch.tensor(
                [
                    test.truth_key.get((int(test.identity[r]), int(test.session[r]), t, level), -1)
                    for r, t in zip(src_rep.tolist(), tgt.tolist(), strict=True)
                ]
            )
            have = truth_rows >= 0
            if have.any():
                truth_u8 = to_uint8(test.batch(truth_rows[have], full, 1.0, device))
                scores.add(ssim=ssim_batch(to_uint8(fake)[have.numpy()], truth_u8, data_range=255))
        name = f"{level / 100:g}"
        out[f"expr_acc_intensity_{name}"] = scores.mean("correct")
        if "ssim" in scores:
            out[f"ssim_truth_intensity_{name}"] = scores.mean("ssim")
    return out


def expression_transfer(render: torch.Tensor, source: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Where each render lies on the line from its source image to its truth, per swap (judge-free).

    ``(|render - source|^2 - |render - truth|^2) / |truth - source|^2``: 1 when the render moved all
    the way to the truth along the source-to-truth difference, -1 when it copied the source, 0 halfway
    (a blur of both scores 0 too). It is linear in the render, so it reads the expression change itself
    where SSIM is dominated by face, pose and light, and no classifier's blind spots enter it.
    Meaningful only for swaps whose target expression differs from the source's.
    """
    d_src = (render - source).pow(2).flatten(1).sum(1)
    d_truth = (render - truth).pow(2).flatten(1).sum(1)
    gap = (truth - source).pow(2).flatten(1).sum(1).clamp_min(1e-8)
    return ((d_src - d_truth) / gap).cpu().numpy()


def _swap(
    nets: Networks,
    cfg: Config,
    w_id: torch.Tensor,
    w_exp: torch.Tensor,
    w_exp_source: torch.Tensor,
    source: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Swaps of test photos, drawn as generation draws a real identity's renders."""
    g = nets.generator_ema
    return render_over_photo(g, cfg.generate.composite, w_id, w_exp, w_exp_source, source, cfg.model.max_resolution)


def _embed_all(emb, data: TrainData, idx: torch.Tensor, full: int, device, bs: int) -> torch.Tensor:
    return torch.cat([emb.embed(data.batch(idx[s : s + bs], full, 1.0, device)) for s in range(0, len(idx), bs)])


def _swap_grid(test: TrainData, src_rows, renders, top, n_cls, full, device, path: Path, n_ids: int = 6) -> Path:
    """Per identity two rows: renders from its neutral image, then the true images."""
    rows, labels = [], []
    seen = set()
    for r in src_rows:
        ident = int(test.identity[r])
        if int(test.labels[r]) != 0 or ident in seen or len(seen) >= n_ids:
            continue
        seen.add(ident)
        src_img = to_uint8(test.batch(torch.tensor([r]), full, 1.0, device))[0]
        rows.append([src_img] + [renders.get((r, t), np.zeros((full, full, 3), np.uint8)) for t in range(n_cls)])
        truth = []
        for t in range(n_cls):
            k = test.truth_key.get((ident, int(test.session[r]), t, top.get(t, 100)), -1)
            truth.append(
                to_uint8(test.batch(torch.tensor([k]), full, 1.0, device))[0]
                if k >= 0
                else np.full((full, full, 3), 255, np.uint8)
            )
        rows.append([src_img, *truth])
        name = test.identity_names[ident]
        labels += [f"{name}", "truth"]
    return save_png(compose_grid(rows, ["source", *EXPRESSIONS[:n_cls]], labels), path)


def _truth_readings(
    judges: dict[str, torch.nn.Module],
    test: TrainData,
    rows: torch.Tensor,
    n_cls: int,
    res: int,
    device: torch.device,
    batch_size: int,
) -> dict[str, float]:
    """How each judge reads the real photos the swaps are drawn toward: what a render identical to its truth scores.

    ``rows`` are the top-intensity photos, each the truth of one swap from every source of its face.
    """
    labels = test.labels[rows]
    out: dict[str, float] = {}
    for key, judge in judges.items():
        pred = torch.cat(
            [
                judge(test.batch(rows[i : i + batch_size], res, 1.0, device)).argmax(1).cpu()
                for i in range(0, len(rows), batch_size)
            ]
        )
        hit = (pred == labels).float()
        out[f"truth_{key}"] = float(hit.mean())
        out.update(
            {
                f"truth_{key}_{name}": float(hit[labels == c].mean())
                for c, name in enumerate(EXPRESSIONS[:n_cls])
                if (labels == c).any()
            }
        )
    return out


def _markdown(result: dict[str, Any]) -> str:
    m = result["metrics"]
    lines = [
        f"# Evaluation of `{result['checkpoint']}` (step {result['step']})",
        "",
        f"Data: `{result['data']}`, split `{result['split']}`.",
        "",
    ]
    lines += ["| metric | value |", "|---|---|"] + [
        f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in m.items()
    ]
    lines += _region_markdown(m) + _per_class_markdown(m) + _leak_markdown(result["leak_table"]) + _novel_markdown(m)
    if result["warnings"]:
        lines += ["", "## Warnings", *[f"- {w}" for w in result["warnings"]]]
    lines += ["", "![swap grid](swap_grid.png)", ""]
    return "\n".join(lines)


def _region_markdown(m: dict[str, Any]) -> list[str]:
    """Composite, plain RGB and copied source side by side, over the changed region and the rest."""
    if "l1_changed" not in m:
        return []
    first = "composite" if "l1_changed_raw" in m else "render"
    kinds = [(first, ""), ("plain generator", "_raw"), ("copy source", "_copy_source")]
    keys = [k.split("_") for k in region_keys()]
    lines = [
        "",
        "## Fidelity where the expression changes",
        "",
        f"Changed region: pixels where the truth differs from the source (dilated 1 px), "
        f"{m['changed_share']:.1%} of the pixels on average. L1 on a 0-1 scale, PSNR in dB.",
        "",
        "| | " + " | ".join(f"{metric} {region}" for metric, region in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for label, suffix in kinds:
        if f"l1_changed{suffix}" in m:
            lines.append(f"| {label} | " + " | ".join(f"{m[f'{a}_{b}{suffix}']:.3f}" for a, b in keys) + " |")
    return lines


def _per_class_markdown(m: dict[str, Any]) -> list[str]:
    """Each judge's reading of the swaps per target class beside its reading of their true photos."""
    names = [n for n in EXPRESSIONS if f"truth_expr_acc_outside_{n}" in m]
    if not names:
        return []
    lines = [
        "",
        "## Expression read per target class: swaps beside their true photos",
        "",
        "A judge's reading of the real photos the swaps are drawn toward is what a render identical to its truth scores.",
        "",
        "| target | independent judge: swaps / truths | outside judge: swaps / truths |",
        "|---|---|---|",
    ]
    for n in [*names, "all"]:
        sfx = "" if n == "all" else f"_{n}"
        cells = [f"{m[f'expr_acc{j}{sfx}']:.3f} / {m[f'truth_expr_acc{j}{sfx}']:.3f}" for j in ("", "_outside")]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def _novel_markdown(m: dict[str, Any]) -> list[str]:
    """Novel identities beside real photos and real identities' codes: judge and identity figures."""
    if "expr_acc_novel" not in m:
        return []
    lines = [
        "",
        "## Novel identities (sampled identity codes: no photo, so no true image)",
        "",
        "Every face rendered at every expression. Identity: cosine between the independent embedder's "
        "embeddings of two images of one face (same) and of two faces (other), and leave-one-out "
        "nearest-face accuracy (top-1).",
        "",
        "| faces | expression accuracy | outside judge | same-face cosine | other-face cosine | identity top-1 |",
        "|---|---|---|---|---|---|",
    ]
    for label, kind in FACE_KINDS:
        figs = [m[f"{fig}_{kind}"] for fig in ("expr_acc", "expr_acc_outside", "id_same", "id_other", "id_top1")]
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in figs) + " |")
    return lines


def _leak_markdown(leak: dict[str, Any]) -> list[str]:
    """The source x target expression accuracy table with its per-target spread."""
    names = leak["expressions"]
    lines = [
        "",
        "## Leakage: swap expression accuracy by source (rows) x target (columns) expression",
        "",
        "| source \\ target | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for name, row in zip(names, leak["accuracy"], strict=True):
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in row) + " |")
    spread = leak["spread_per_target"]
    lines.append(
        "| spread (max - min) | " + " | ".join("-" if spread[n] is None else f"{spread[n]:.2f}" for n in names) + " |"
    )
    s = leak["summary"]
    lines += ["", f"Spread across sources: mean {s['leak_spread_mean']:.3f}, max {s['leak_spread_max']:.3f}.", ""]
    lines += [f"![leak table]({Path(leak['heatmap']).name})"]
    return lines
