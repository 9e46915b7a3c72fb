"""How steady an instrument the expression judge is (run by hand; prints one line per judge).

    python benchmarks/bench_judges.py CHECKPOINT DATASET_DIR [DATASET_DIR ...] [--soften 0 0.5] [--steps 400]
        [--seeds 0 1 2] [--panel 3]

For each (soften, steps, seed) it trains a fresh pair of independent judges the way training's
`finalize` does (`train.judge_soften`, `train.judge_steps`, `train.seed`) on the checkpoint's real
training split and prints:
- real validation images: accuracy, the pooled calibrated threshold (95% of the correctly classified
  real images pass), and accuracy after a Gaussian blur of sigma 1 px (is it judging expressions or
  sharpness?);
- the renders of each DATASET_DIR (a generated dataset, staged or published; the same judges score
  every one, a line each): argmax accuracy, and with
  the pooled and with per-class thresholds (generation's default) the share that passes the
  expression check, the class balance of the passing renders, per-class pass rates;
- a control: the unchanged base photos of the dataset's real identities scored against every
  expressive target (a judge that passes them is lenient, not robust).
The spread over seeds is what a gate built on one judge can flip on. With `--panel K` each seed trains
a panel of K judges (the gate's `train.judge_panel`) and scores with their mean probability; each line
then also gives the verdict of the gates the expression check feeds (pass rates, class balance), with
the dataset's own identity and SSIM flags.
Needs the checkpoint's training data (`fersynth data make ...`); about 2 min per 400-step pair on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from models import JudgePanel
from pipeline.calibration import calibrate_expression_threshold, calibrate_expression_thresholds
from pipeline.config import QualityConfig, config_to_dict, load_config, to_overrides
from pipeline.core.checkpoint import load_checkpoint
from pipeline.core.data import load_split, to_model_range
from pipeline.core.legacy import checkpoint_config
from pipeline.expressions import EXPRESSIONS
from pipeline.judges import build_eval_judges, build_expression_judge, train_eval_judges, train_panel_members
from pipeline.quality.gates import class_balance_ratio, evaluate_gates, gate_inputs_from_manifest, per_image_flags


def _png_batch(paths: list[Path]) -> torch.Tensor:
    arr = np.stack([np.array(Image.open(p).convert("RGB")) for p in paths])
    return to_model_range(torch.from_numpy(arr).permute(0, 3, 1, 2), "cpu")


def main() -> None:
    # Long on purpose: a benchmark's whole protocol (arguments, judges per seed, every rule) read top to bottom.
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("datasets", type=Path, nargs="+", help="generated dataset folders (manifest/, plan.json)")
    ap.add_argument("--soften", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--steps", type=int, nargs="+", default=[400])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--panel", type=int, default=1, help="judges per panel (1: a single judge)")
    ap.add_argument("--save", type=Path, help="folder for each panel's probabilities (re-score other rules offline)")
    args = ap.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    base = to_overrides(config_to_dict(checkpoint_config(ckpt, str(args.checkpoint))))
    cfg0 = load_config(None, base)
    res, dev = cfg0.model.max_resolution, torch.device("cpu")
    train = load_split(cfg0.data.root, res, "train", cfg0.data.cache_dir)
    val = load_split(cfg0.data.root, res, "val", cfg0.data.cache_dir)
    x_val = val.batch(torch.arange(val.n), res, 1.0, dev)
    x_blur = TF.gaussian_blur(x_val, kernel_size=5, sigma=1.0)

    sets = [_rendered_set(d, cfg0.data.root) for d in args.datasets]
    verdicts: dict[Path, list[tuple[float, str]]] = {d: [] for d in args.datasets}
    print(f"{args.checkpoint}: {train.n} training images; {val.n} validation images")

    for soften in args.soften:
        for steps in args.steps:
            for seed in args.seeds:
                cfg = load_config(
                    None, [*base, f"train.judge_soften={soften}", f"train.judge_steps={steps}", f"train.seed={seed}"]
                )
                torch.manual_seed(seed)  # the judges' initial weights
                start = time.perf_counter()
                state = train_eval_judges(cfg, train, dev)
                took = time.perf_counter() - start
                clf, _ = build_eval_judges(cfg, len(train.identity_names))
                clf.load_state_dict(state["classifier"])
                clf.eval()
                if args.panel > 1:
                    clf = JudgePanel([clf, *_members(cfg, train, args.panel)]).eval()
                    took = time.perf_counter() - start

                @torch.no_grad()
                def probs(x: torch.Tensor, clf: torch.nn.Module = clf) -> torch.Tensor:
                    return torch.cat([torch.softmax(clf(x[i : i + 256]), 1) for i in range(0, len(x), 256)])

                p = probs(x_val)
                right = p.argmax(1) == val.labels
                p_t = p[torch.arange(val.n), val.labels]
                pooled = calibrate_expression_threshold(p_t.numpy(), right.numpy())
                own = calibrate_expression_thresholds(p_t.numpy(), right.numpy(), val.labels.numpy(), EXPRESSIONS)
                blur_acc = float((probs(x_blur).argmax(1) == val.labels).float().mean())
                for name, (df, renders, target, base_photos) in zip(args.datasets, sets, strict=True):
                    pb = probs(base_photos) if base_photos is not None else None
                    t_score = time.perf_counter()
                    pr = probs(renders)
                    t_score = time.perf_counter() - t_score  # what the panel adds to generation: scoring
                    line = _judge_renders(df, pr, target, pb, pooled, own)
                    verdicts[name].append((line[-1][0], line[-1][1]))
                    if args.save:
                        args.save.mkdir(parents=True, exist_ok=True)
                        np.savez(
                            args.save / f"{name.name}-soften{soften}-steps{steps}-seed{seed}.npz",
                            p_val=p.numpy(),
                            val_labels=val.labels.numpy(),
                            p_renders=pr.numpy(),
                            target=target.numpy(),
                        )
                    print(
                        f"{name} soften={soften} steps={steps} seed={seed} ({took:.0f} s) | real val: accuracy "
                        f"{right.float().mean():.3f}, pooled threshold {pooled:.3f}, blurred (sigma 1) accuracy "
                        f"{blur_acc:.3f} | {len(df)} renders (scored in {t_score:.2f} s): argmax {line[0]:.3f} | "
                        + " | ".join(line[1:-1]),
                        flush=True,
                    )
    for name, runs in verdicts.items():
        rates = [r for r, _ in runs]
        print(
            f"{name}: {len(runs)} panels | per-class pass {min(rates):.3f}-{max(rates):.3f} "
            f"(spread {max(rates) - min(rates):.3f}) | expression gates: {', '.join(v for _, v in runs)}"
        )


def _rendered_set(folder: Path, data_root: Path):
    """A dataset's manifest, its renders, their targets and the base photos of its real identities."""
    df = pd.read_parquet(folder / "manifest")
    renders = _png_batch([folder / f for f in df["file_name"]])
    target = torch.as_tensor(df["expression_index"].to_numpy().astype(np.int64))
    plan = json.loads((folder / "plan.json").read_text())
    photos = [data_root / i["base_image"] for i in plan["identities"] if i.get("base_image")]
    return df, renders, target, (_png_batch(photos) if photos else None)


def _judge_renders(df, p, target, pb, pooled: float, own: dict) -> list:
    """Argmax accuracy, then a verdict string per threshold rule (pooled, per class)."""
    scored = pd.DataFrame(
        {
            "expression": df["expression"].to_numpy(),
            "expression_idx": target.numpy(),
            "expression_pred": p.argmax(1).numpy(),
            "expression_p_target": p[torch.arange(len(target)), target].numpy(),
            "identity_cosine": 1.0,  # the expression check alone is measured here
        }
    )
    line: list = [float((p.argmax(1) == target).float().mean())]
    # The generation rule itself (argmax is the target and p >= the threshold), pooled and per class.
    for name, q in (
        ("pooled", QualityConfig(expression_threshold=pooled)),
        ("per-class", QualityConfig(expression_threshold=pooled, expression_thresholds=own)),
    ):
        passed = per_image_flags(scored, q)["expression_pass"]
        verdict = _verdict(df, passed, q) if name == "per-class" else ""
        by_class = passed.groupby(scored["expression"])
        balance = class_balance_ratio(scored.loc[passed, "expression"], list(by_class.groups))
        control = float("nan")
        if pb is not None:
            control = max(
                float(((pb.argmax(1) == c) & (pb[:, c] >= q.expression_threshold_for(e))).float().mean())
                for c, e in enumerate(EXPRESSIONS)
                if e != "neutral"
            )
        line.append(
            f"{name}: pass {passed.mean():.3f}, balance {balance:.2f}, photos pass as another class "
            f"{control:.2f}, {by_class.mean().round(2).to_dict()}"
            + (f", expression gates {verdict}" if verdict else "")
        )
    line.append((float(passed.mean()), verdict))  # the generation rule's (per class), for the closing summary
    return line


def _members(cfg, train, size: int) -> list[torch.nn.Module]:
    members = []
    for state in train_panel_members(cfg, train, torch.device("cpu"), size):
        m = build_expression_judge(cfg)
        m.load_state_dict(state)
        members.append(m.eval())
    return members


def _verdict(manifest: pd.DataFrame, expression_pass: pd.Series, q: QualityConfig) -> str:
    """publish/reject of the gates the expression check feeds, with the dataset's other per-image flags."""
    rows = manifest.assign(expression_pass=expression_pass.to_numpy())
    rows["all_pass"] = rows["expression_pass"] & rows["identity_pass"].fillna(False).astype(bool)
    if rows["ssim_truth"].notna().any():
        rows["all_pass"] &= ~(rows["ssim_truth"] < q.ssim_floor).fillna(False)
    gates = evaluate_gates(gate_inputs_from_manifest(rows), {}, q.model_copy(update={"usefulness": False}))
    fed = [g for g in gates.gates if g.name in ("pass_rate", "expression_pass_rate", "class_balance")]
    return "publish" if all(g.passed for g in fed) else "reject"


if __name__ == "__main__":
    main()
