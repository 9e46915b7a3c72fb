"""Expression correctness: does the classifier trained on real data see the target expression?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.quality._tensors import Device, iter_batches, resolve_device, to_signed_range


def expression_scores(
    classifier: nn.Module,
    images: torch.Tensor | np.ndarray,
    target_idx: torch.Tensor | np.ndarray | Sequence[int],
    threshold: float = 0.5,
    batch_size: int = 64,
    device: Device | torch.device = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred_idx, p_target, passed) per image; passed = argmax is the target and p_target >= threshold.

    images: NCHW uint8 or float [-1, 1] (the classifier is trained on the generator's [-1, 1]
    convention). The classifier returns logits (N, num_classes). Non-finite logits give
    p_target NaN and pred -1, and the image fails.
    """
    x = to_signed_range(images, "expression classifier input")
    target = torch.as_tensor(np.asarray(target_idx), dtype=torch.long).reshape(-1)
    if target.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {target.shape[0]} target labels")
    dev = resolve_device(device)
    was_training = classifier.training
    classifier.eval().to(dev)
    preds, ps = [], []
    try:
        with torch.no_grad():
            for sl in iter_batches(x.shape[0], batch_size):
                logits = classifier(x[sl].to(dev)).float().cpu()
                if logits.ndim != 2:
                    raise ValueError(f"classifier must return (N, classes) logits, got shape {tuple(logits.shape)}")
                t = target[sl]
                if t.min() < 0 or t.max() >= logits.shape[1]:
                    raise ValueError(f"target index out of range for {logits.shape[1]} classes: {t.tolist()}")
                prob = logits.softmax(dim=1)
                ok = torch.isfinite(logits).all(dim=1)
                pred = torch.where(ok, prob.argmax(dim=1), torch.full_like(t, -1))
                p_t = prob.gather(1, t[:, None])[:, 0]
                preds.append(pred)
                ps.append(torch.where(ok, p_t, torch.full_like(p_t, float("nan"))))
    finally:
        classifier.train(was_training)
    pred_idx = torch.cat(preds).numpy()
    p_target = torch.cat(ps).double().numpy()
    passed = (pred_idx == target.numpy()) & np.isfinite(p_target) & (p_target >= threshold)
    return pred_idx, p_target, passed
