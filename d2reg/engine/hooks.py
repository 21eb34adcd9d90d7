"""Training hooks d2reg adds to detectron2's: EoMT's mask annealing."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from detectron2.engine import HookBase

__all__ = ["MaskAnnealingHook", "mask_keep_probability"]


def mask_keep_probability(it: int, start: int, end: int, power: float = 0.9) -> float:
    """EoMT's keep probability of the masked attention at iteration ``it``: 1 before ``start``,
    ``(1 - (it - start) / (end - start)) ** power`` inside the window, 0 from ``end`` on."""
    if it < start:
        return 1.0
    if it >= end:
        return 0.0
    return (1.0 - (it - start) / (end - start)) ** power


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class MaskAnnealingHook(HookBase):
    """Sets ``model.attn_mask_probs[k]`` before every iteration from the per-query-block windows
    ``windows = (starts, ends)``, ``starts[k]..ends[k]`` in iterations (e.g.
    :func:`d2reg.recipes.eomt_annealing_windows`), and logs them as
    ``attn_mask_prob_{k}``. The official code sets the probability used at step ``s`` from ``s`` completed
    steps; so does this hook (before step ``s``, from ``trainer.iter == s``), which also makes a resumed run
    continue on schedule. ``model``: the EoMT (default: the trainer's, DDP unwrapped)."""

    def __init__(self, windows: Tuple[Sequence[int], Sequence[int]], power: float = 0.9, model=None):
        starts, ends = windows
        if len(starts) != len(ends) or any(e <= s for s, e in zip(starts, ends)) or min(starts, default=0) < 0:
            raise ValueError(f"mask annealing windows must pair each start with a later end, got starts {list(starts)}"
                             f", ends {list(ends)}.")
        self.starts, self.ends, self.power, self._model = list(starts), list(ends), power, model

    def before_train(self):
        model = _unwrap(self._model if self._model is not None else self.trainer.model)
        if not hasattr(model, "attn_mask_probs"):
            raise TypeError("MaskAnnealingHook anneals an EoMT model (attn_mask_probs); got "
                            f"{type(model).__name__}.")
        if len(self.starts) != model.attn_mask_probs.numel():
            raise ValueError(f"{len(self.starts)} annealing windows for {model.attn_mask_probs.numel()} query blocks: "
                             "give one (start, end) per query block (MODEL.EOMT.NUM_BLOCKS).")
        self._model = model

    def before_step(self):
        it = self.trainer.iter
        probs = [mask_keep_probability(it, s, e, self.power) for s, e in zip(self.starts, self.ends)]
        self._model.attn_mask_probs.copy_(torch.tensor(probs, dtype=self._model.attn_mask_probs.dtype))
        storage = self.trainer.storage
        storage.put_scalars(**{f"attn_mask_prob_{k}": p for k, p in enumerate(probs)}, smoothing_hint=False)
