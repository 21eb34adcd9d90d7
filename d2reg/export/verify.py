"""Run an exported graph with onnxruntime beside PyTorch and compare, output by output.

Backbone: the largest absolute difference per output, relative to that output's largest absolute value,
must stay within ``tol`` (1e-4). Whole model: R-CNN detections must agree in count, classes and order,
boxes within 1e-3 of the box scale, scores within 1e-3, pasted masks at IoU >= 0.99 each; semantic
segmentation logits within ``tol`` relative (and the per-pixel argmax is reported).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.layers import paste_masks_in_image
from detectron2.structures import Boxes, pairwise_iou
from torch import nn

from ..extras import require
from .model import model_adapter

__all__ = ["VerifyRow", "default_verify_sizes", "format_report", "ort_session", "verify_backbone", "verify_model"]

BOX_TOL = 1e-3
MASK_IOU = 0.99


@dataclass
class VerifyRow:
    """One output at one input size: its largest absolute and relative difference, and the verdict."""

    size: Tuple[int, ...]
    output: str
    max_abs: float
    rel: float
    ok: bool
    detail: str = ""


def ort_session(path: str):
    """An onnxruntime CPU session for ``path``."""
    ort = require("onnxruntime", "verifying an ONNX export")
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def default_verify_sizes(low: int, stride: int) -> List[Tuple[int, int]]:
    """Three sizes a graph recorded at ``_example_side`` never saw: square, non-square, and one whose
    sides are not multiples of 32 (``stride`` > 32 pyramids still accept it: they floor the coarse levels)."""
    base = max(low, 64)
    base = -(-base // stride) * stride + stride  # a multiple of the coarsest stride above the minimum
    return [(base, base), (base, base + 3 * stride // 2 if stride >= 32 else base + 48), (base + 13, base + 37)]


def _rel(ref: np.ndarray, got: np.ndarray) -> Tuple[float, float]:
    diff = float(np.abs(ref.astype(np.float64) - got).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 1.0
    return diff, diff / max(scale, 1e-12)


def verify_backbone(backbone: nn.Module, path: str, sizes: Sequence[Tuple[int, int]], *, batch: int = 1,
                    tol: float = 1e-4, seed: int = 0) -> List[VerifyRow]:
    """Compare ``backbone`` (PyTorch, eval mode) and the ONNX file ``path`` on random ``(batch, 3, H, W)``
    inputs of each size; one :class:`VerifyRow` per output and size."""
    session = ort_session(path)
    names = [o.name for o in session.get_outputs()]
    g = torch.Generator().manual_seed(seed)
    rows = []
    was_training = backbone.training
    backbone.eval()
    try:
        for h, w in sizes:
            x = torch.randn(batch, 3, h, w, generator=g)
            with torch.no_grad():
                ref = backbone(x)
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            for name, out in zip(names, got):
                r = ref[name].numpy()
                if r.shape != out.shape:
                    rows.append(VerifyRow((batch, 3, h, w), name, float("inf"), float("inf"), False,
                                          f"shape {out.shape} != PyTorch {r.shape}"))
                    continue
                diff, rel = _rel(r, out)
                rows.append(VerifyRow((batch, 3, h, w), name, diff, rel, rel <= tol))
    finally:
        backbone.train(was_training)
    return rows


def _mask_ious(ref_masks, got_masks, ref_boxes, got_boxes, hw) -> np.ndarray:
    a = paste_masks_in_image(torch.from_numpy(ref_masks)[:, 0], torch.from_numpy(ref_boxes), hw)
    b = paste_masks_in_image(torch.from_numpy(got_masks)[:, 0], torch.from_numpy(got_boxes), hw)
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).numpy()


def _match(ref: dict, got: dict) -> np.ndarray:
    """For each PyTorch detection, the index of the onnxruntime one it corresponds to: same class, highest
    box IoU (greedy in PyTorch's order). Detections of equal score (common before training) may come out
    in either order, so position alone does not pair them."""
    iou = pairwise_iou(Boxes(torch.from_numpy(ref["boxes"])), Boxes(torch.from_numpy(got["boxes"]))).numpy()
    if "classes" in ref:
        iou = np.where(ref["classes"][:, None] == got["classes"][None, :], iou, -1.0)
    order = np.full(len(iou), -1)
    free = np.ones(iou.shape[1], dtype=bool)
    for i in range(len(iou)):
        j = int(np.argmax(np.where(free, iou[i], -2.0)))
        order[i], free[j] = j, False
    return order


def _compare_detections(size, ref: dict, got: dict) -> List[VerifyRow]:
    rows = []
    n_ref, n_got = len(ref["scores"]), len(got["scores"])
    if n_ref != n_got:
        return [VerifyRow(size, "detections", float(abs(n_ref - n_got)), float("inf"), False,
                          f"{n_got} detections, PyTorch {n_ref}")]
    rows.append(VerifyRow(size, "detections", 0.0, 0.0, True, f"{n_ref} detections"))
    got = {k: v[_match(ref, got)] if k != "image_size" else v for k, v in got.items()}
    if "classes" in ref:
        wrong = int((ref["classes"] != got["classes"]).sum())
        rows.append(VerifyRow(size, "classes", float(wrong), float(wrong), wrong == 0, f"{wrong} differ"))
    box_scale = max(float(np.abs(ref["boxes"]).max()) if n_ref else 1.0, 1.0)
    diff = float(np.abs(ref["boxes"] - got["boxes"]).max()) if n_ref else 0.0
    rows.append(VerifyRow(size, "boxes", diff, diff / box_scale, diff / box_scale <= BOX_TOL))
    diff, _ = _rel(ref["scores"], got["scores"])
    rows.append(VerifyRow(size, "scores", diff, diff, diff <= BOX_TOL))
    if "masks" in ref and n_ref:
        ious = _mask_ious(ref["masks"], got["masks"], ref["boxes"], got["boxes"], size[-2:])
        worst = float(ious.min())
        rows.append(VerifyRow(size, "masks", 1.0 - worst, 1.0 - worst, worst >= MASK_IOU, f"min IoU {worst:.4f}"))
    return rows


def verify_model(model: nn.Module, path: str, sizes: Sequence[Tuple[int, int]], *, tol: float = 1e-4,
                 seed: int = 0) -> List[VerifyRow]:
    """Compare the whole ``model`` (through the same ``TracingAdapter`` as the export) and the ONNX file
    ``path`` on random 0-255 images ``(3, H, W)`` of each size."""
    session = ort_session(path)
    g = torch.Generator().manual_seed(seed)
    rows: List[VerifyRow] = []
    was_training = model.training
    images = [torch.rand(3, h, w, generator=g) * 255 for h, w in sizes]
    try:
        adapter, names = model_adapter(model, images[0])  # one adapter: the output structure is size-independent
        for (h, w), image in zip(sizes, images):
            with torch.no_grad():
                ref = {n: t.numpy() for n, t in zip(names, adapter(image))}
            got = dict(zip([o.name for o in session.get_outputs()],
                           session.run(None, {session.get_inputs()[0].name: image.numpy()})))
            size = (3, h, w)
            if "sem_seg" in ref:
                r, o = ref["sem_seg"], got["sem_seg"]
                if r.shape != o.shape:
                    rows.append(VerifyRow(size, "sem_seg", float("inf"), float("inf"), False,
                                          f"shape {o.shape} != PyTorch {r.shape}"))
                    continue
                diff, rel = _rel(r, o)
                agree = float((r.argmax(0) == o.argmax(0)).mean())
                rows.append(VerifyRow(size, "sem_seg", diff, rel, rel <= tol, f"argmax agrees on {agree:.2%}"))
            else:
                rows += _compare_detections(size, ref, got)
    finally:
        model.train(was_training)
    return rows


def format_report(rows: Sequence[VerifyRow], title: Optional[str] = None) -> str:
    """The rows as an aligned text table (one line per output and size)."""
    lines = [title] if title else []
    lines.append(f"{'input':>20}  {'output':<12} {'max |diff|':>11} {'relative':>10}  verdict")
    for r in rows:
        lines.append(f"{'x'.join(map(str, r.size)):>20}  {r.output:<12} {r.max_abs:>11.3g} {r.rel:>10.3g}  "
                     f"{'ok' if r.ok else 'MISMATCH'}{'  ' + r.detail if r.detail else ''}")
    return "\n".join(lines)
