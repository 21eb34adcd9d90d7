"""Text and JSON reporting of the token-norm analysis (``tools/token_norms.py``): the per-block
table, the neighbour-similarity table, outlier positions per image, the run's metadata and which
blocks to draw as heatmaps."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
from tabulate import tabulate

from .common import AnalysisModel, InputImage

__all__ = ["POST_NOTE", "PRE_NOTE", "format_norm_report", "heatmap_blocks", "norm_mode", "norms_meta"]

POST_NOTE = ("post-final-norm: tokens after the final LayerNorm, as get_intermediate_layers(norm=True) returns them; "
             "the LayerNorm rescales tokens to similar lengths and usually HIDES the high-norm outliers")
PRE_NOTE = ("pre-final-norm: raw residual-stream tokens at each block's output (no final LayerNorm), where the "
            "high-norm outliers show; get_intermediate_layers(norm=True) would hide them (see --post-norm)")


def norm_mode(post_norm: bool) -> str:
    """Where the norms were taken: ``"post-final-norm"`` or ``"pre-final-norm"``."""
    return "post-final-norm" if post_norm else "pre-final-norm"


def _image_meta(model: AnalysisModel, im: InputImage) -> dict:
    (height, width), (rows, cols) = im.size, model.grid(*im.size)
    return {"name": im.name, "source": im.source, "height": height, "width": width, "rows": rows, "cols": cols}


def norms_meta(model: AnalysisModel, images: Sequence[InputImage], post_norm: bool, relative: Optional[float],
               thresholds: Sequence[float], sim: dict) -> dict:
    """The ``summary.json`` metadata: what was measured, the outlier rule, the model and the images."""
    if relative is not None:
        threshold = {"mode": "relative", "k": relative, "per_block": list(thresholds),
                     "rule": "norm > k x block median (median over all images' patch tokens)"}
    else:
        threshold = {"mode": "absolute", "value": thresholds[0], "rule": "norm > value"}
    info = model.info
    return {
        "norm": norm_mode(post_norm),
        "norm_note": POST_NOTE if post_norm else PRE_NOTE,
        "tokens": "patch tokens only (CLS / registers (DINOv3: storage tokens): cls_norm / register_norm per block); "
                  "blocks are 0-based, "
                  "row/col on the patch grid",
        "threshold": threshold,
        "model": {"weights": model.weights or None, "family": model.family, "arch": model.spec.name,
                  "embed_dim": model.spec.embed_dim, "depth": model.depth, "num_heads": model.spec.num_heads,
                  "registers": model.num_register_tokens,
                  "patch_size": model.patch_size, "checkpoint_format": info.format if info else None},
        "images": [_image_meta(model, im) for im in images],
        "neighbour_similarity": {k: v for k, v in sim.items() if not k.endswith("_values")},
    }


def format_norm_report(label: str, stats: List[dict], outliers: List[dict], sim: dict, image_names: Sequence[str],
                       post_norm: bool, relative: Optional[float], max_images: int = 20) -> str:
    """Markdown-ish text: per-block norm table, neighbour similarity, outlier positions per image."""
    lines = [f"\n== {label}\n   norms: {POST_NOTE if post_norm else PRE_NOTE}"]
    thr = f"> {relative:g} x block median" if relative is not None else f"> {stats[0]['threshold']:g}"
    keys = ["block", "min", "median", "p99", "max", "threshold", "num_outliers", "outlier_fraction", "cls_norm",
            "register_norm"]
    cols = ["block", "min", "median", "p99", "max", "threshold", "outliers", "fraction", "CLS", "registers"]
    rows = [[s.get(k, "-") for k in keys] for s in stats]
    for r in rows:
        r[7] = f"{100 * r[7]:.2f}%"
    lines.append(f"   patch-token L2 norms per block, outlier: norm {thr}")
    lines.append(tabulate(rows, headers=cols, tablefmt="github", floatfmt=".1f"))
    o, n = sim["outlier"], sim["normal"]

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    lines.append(f"\n   neighbour similarity (paper Fig. 5a): mean cosine to the 4 neighbours at the patch-embedding "
                 f"output (before position embeddings), tokens classed by block {sim['block']}:")
    lines.append(tabulate([["outlier", o["count"], fmt(o["mean"]), fmt(o["median"])],
                           ["normal", n["count"], fmt(n["mean"]), fmt(n["median"])]],
                          headers=["tokens", "count", "mean cos", "median cos"], tablefmt="github"))
    by_image: Dict[str, List[dict]] = {}
    for d in outliers:
        by_image.setdefault(d["image"], []).append(d)
    lines.append(f"\n   outlier positions per image (row, col on the patch grid) at block {sim['block']}:")
    for name in image_names[:max_images]:
        found = by_image.get(name, [])
        blocks = sorted({d["block"] for d in found})
        at_ref = sorted((d for d in found if d["block"] == sim["block"]), key=lambda d: -d["norm"])
        pos = ", ".join(f"({d['row']},{d['col']}) {d['norm']:.0f}" for d in at_ref[:8])
        more = f" (+{len(at_ref) - 8})" if len(at_ref) > 8 else ""
        span = f"blocks {blocks[0]}..{blocks[-1]} ({len(blocks)} with outliers)" if blocks else "no outliers"
        lines.append(f"   {name}: {span}; {pos or '-'}{more}")
    if len(image_names) > max_images:
        lines.append(f"   ... {len(image_names) - max_images} more images in outliers.csv")
    return "\n".join(lines)


def heatmap_blocks(spec: str, depth: int, outliers_per_model: Sequence[Sequence[dict]], image_name: str,
                   max_blocks: int = 8) -> List[int]:
    """Blocks to draw for one image: ``"all"``, a comma list (negative indexes allowed) or ``"auto"``
    (blocks where any model has an outlier in that image, at most ``max_blocks`` spread evenly; else
    the last block)."""
    if spec == "all":
        return list(range(depth))
    if spec != "auto":
        return sorted({int(b) % depth for b in spec.split(",")})
    blocks = sorted({d["block"] for outl in outliers_per_model for d in outl if d["image"] == image_name})
    if not blocks:
        return [depth - 1]
    if len(blocks) > max_blocks:
        blocks = [blocks[i] for i in np.linspace(0, len(blocks) - 1, max_blocks).round().astype(int)]
    return blocks
