"""Per-block token norms, high-norm ("outlier") token detection and the outliers' neighbour similarity.

What is measured, precisely:
- norms are L2 norms of the *patch* tokens (CLS and registers are reported separately) at the
  output of every block, 0-based. By default BEFORE the final LayerNorm ("pre-norm"): the official
  ``get_intermediate_layers(norm=True)`` applies that norm to every block's output, which rescales
  each token to about the same length and so hides the high-norm tokens. ``post_norm=True`` shows
  that view.
- a token is an outlier in a block when its norm exceeds the absolute ``threshold`` (the paper uses
  150 for DINOv2 ViT-g) or, with ``relative=K``, K times that block's median patch-token norm
  (median over all images' patch tokens together, the ``median`` reported for the block).
- neighbour similarity (the paper's Fig. 5a): mean cosine similarity of a token with its 4
  neighbours (up/down/left/right, those inside the grid) at the output of the patch-embedding layer,
  BEFORE position embeddings are added, for outlier vs normal tokens of a reference block.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .common import AnalysisModel, InputImage, to_tensor

__all__ = [
    "ImageNorms",
    "block_stats",
    "block_thresholds",
    "block_tokens",
    "find_outliers",
    "neighbour_cosine",
    "outlier_neighbour_similarity",
    "reference_block",
    "summary",
    "token_norms",
    "write_csv",
    "write_json",
]

STAT_KEYS = ("min", "median", "p99", "max")


@dataclass
class ImageNorms:
    """Token norms of one image under one model."""

    name: str
    norms: np.ndarray  # (blocks, rows, cols) patch-token L2 norms
    prefix_norms: np.ndarray  # (blocks, 1 + registers): CLS then registers
    neighbour_cos: np.ndarray  # (rows, cols) mean cosine to 4 neighbours at the patch-embedding output


@torch.inference_mode()
def block_tokens(model: AnalysisModel, x: torch.Tensor, post_norm: bool = False):
    """Run the ViT once; returns (patch tokens per block [(B, C, rows, cols)], prefix tokens per
    block [(B, 1 + R, C)], patch-embedding output (B, rows, cols, C) before position embeddings)."""
    vit = model.vit
    out = vit.forward_intermediates(
        x, indices=None, norm=post_norm, return_prefix_tokens=True, output_fmt="NCHW", intermediates_only=True
    )
    patches = [p for p, _ in out]
    prefix = [c for _, c in out]
    embed = vit.patch_embed(x)  # (B, rows, cols, C): dynamic_img_size keeps NHWC, pads like the forward
    return patches, prefix, embed


def neighbour_cosine(feat: torch.Tensor) -> torch.Tensor:
    """(rows, cols, C) -> (rows, cols): mean cosine similarity to the 4-neighbours inside the grid."""
    f = F.normalize(feat.float(), dim=-1)
    total = torch.zeros(f.shape[:2], device=f.device)
    count = torch.zeros_like(total)
    vertical = (f[:-1] * f[1:]).sum(-1)  # (rows - 1, cols): each token with the one below
    horizontal = (f[:, :-1] * f[:, 1:]).sum(-1)  # (rows, cols - 1): each token with the one right
    for cos, first, second in ((vertical, np.s_[:-1], np.s_[1:]), (horizontal, np.s_[:, :-1], np.s_[:, 1:])):
        total[first] += cos
        total[second] += cos
        count[first] += 1
        count[second] += 1
    return total / count.clamp(min=1)


def token_norms(model: AnalysisModel, image: InputImage, post_norm: bool = False) -> ImageNorms:
    """Norms of every block's patch and prefix tokens for one image, and its neighbour cosines."""
    patches, prefix, embed = block_tokens(model, to_tensor(image, model.device), post_norm)
    norms = torch.stack([p[0].norm(dim=0) for p in patches]).float().cpu().numpy()
    pre = torch.stack([c[0].norm(dim=-1) for c in prefix]).float().cpu().numpy()
    cos = neighbour_cosine(embed[0]).cpu().numpy()
    return ImageNorms(image.name, norms, pre, cos)


def block_thresholds(results: Sequence[ImageNorms], threshold: Optional[float], relative: Optional[float]):
    """The outlier threshold of each block: ``threshold``, or ``relative`` x the block median."""
    medians = _pooled(results, np.median)
    if relative is not None:
        return [float(relative * m) for m in medians]
    return [float(threshold)] * len(medians)


def _pooled(results: Sequence[ImageNorms], fn) -> List[float]:
    depth = results[0].norms.shape[0]
    return [float(fn(np.concatenate([r.norms[b].ravel() for r in results]))) for b in range(depth)]


def block_stats(results: Sequence[ImageNorms], thresholds: Sequence[float]) -> List[dict]:
    """Per block over all images' patch tokens: min / median / p99 / max norm, outlier fraction
    (plus the threshold used, the outlier count and the mean CLS / register norms)."""
    rows = []
    for b, thr in enumerate(thresholds):
        v = np.concatenate([r.norms[b].ravel() for r in results])
        prefix = np.stack([r.prefix_norms[b] for r in results])  # (images, 1 + R)
        n_out = int((v > thr).sum())
        row = {"block": b, "min": float(v.min()), "median": float(np.median(v)), "p99": float(np.percentile(v, 99)),
               "max": float(v.max()), "outlier_fraction": n_out / v.size, "threshold": thr, "num_outliers": n_out,
               "cls_norm": float(prefix[:, 0].mean())}
        if prefix.shape[1] > 1:
            row["register_norm"] = float(prefix[:, 1:].mean())
        rows.append(row)
    return rows


def find_outliers(results: Sequence[ImageNorms], thresholds: Sequence[float]) -> List[dict]:
    """Every (image, block, row, col) whose patch-token norm exceeds its block's threshold."""
    out = []
    for r in results:
        for b, thr in enumerate(thresholds):
            for i, j in np.argwhere(r.norms[b] > thr):
                out.append({"image": r.name, "block": b, "row": int(i), "col": int(j), "norm": float(r.norms[b, i, j])})
    return out


def reference_block(stats: Sequence[dict], requested: Optional[int] = None) -> int:
    """The block whose outliers define "outlier tokens" for the neighbour similarity: ``requested``,
    else the last block if it has outliers, else the block with the most outliers (last one on ties)."""
    if requested is not None:
        return requested % len(stats)
    if stats[-1]["num_outliers"]:
        return len(stats) - 1
    counts = [s["num_outliers"] for s in stats]
    return int(len(counts) - 1 - int(np.argmax(counts[::-1])))


def outlier_neighbour_similarity(results: Sequence[ImageNorms], thresholds: Sequence[float], block: int) -> dict:
    """Fig. 5a: neighbour cosine at the patch-embedding output for the outlier vs normal tokens of ``block``."""
    out_vals, norm_vals = [], []
    for r in results:
        mask = r.norms[block] > thresholds[block]
        out_vals.append(r.neighbour_cos[mask])
        norm_vals.append(r.neighbour_cos[~mask])
    o, n = np.concatenate(out_vals), np.concatenate(norm_vals)

    def describe(v):
        return {"count": int(v.size), "mean": float(v.mean()) if v.size else None,
                "median": float(np.median(v)) if v.size else None}

    return {"block": block, "where": "patch-embedding output, before position embeddings",
            "outlier": describe(o), "normal": describe(n), "outlier_values": o.tolist(), "normal_values": n.tolist()}


def summary(stats: List[dict], outliers: List[dict], meta: Dict) -> dict:
    """``summary.json``: the contract keys ``blocks`` and ``outliers`` first, then ``meta``."""
    return {"blocks": stats, "outliers": outliers, **meta}


def write_json(obj: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def write_csv(rows: List[dict], path: str, fields: Sequence[str] = ()) -> None:
    keys: List[str] = list(fields)
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
