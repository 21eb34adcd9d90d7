"""PCA of patch features -> RGB, one basis shared by all images (fit on their tokens together).

Recipe (as in DINO/DINOv2's visualisations): fit a 3-component PCA on the patch tokens of all
images; the components, min-max scaled to [0, 1] over all images with the 1st/99th percentiles
as ends (so one high-norm token cannot wash out the colours), are the R, G, B channels. With a
foreground threshold, tokens whose scaled first component is above it (below it with
``invert``) are foreground; a second PCA is then fit on the foreground tokens only, and the
background is drawn black.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from .common import AnalysisModel, InputImage, to_tensor

__all__ = ["PCAResult", "block_features", "fit_pca", "pca_rgb"]


@dataclass
class PCAResult:
    rgb: List[np.ndarray]  # per image (rows, cols, 3) in [0, 1]
    foreground: List[np.ndarray]  # per image (rows, cols) bool (all True without a threshold)
    first: List[np.ndarray]  # per image (rows, cols): first component of the first PCA, scaled to [0, 1]
    explained: np.ndarray  # (3,) variance ratio of the components used for the colours


@torch.inference_mode()
def block_features(model: AnalysisModel, image: InputImage, block: int = -1, post_norm: bool = False) -> torch.Tensor:
    """(rows, cols, C) patch tokens at the output of ``block`` (pre- or post-final-norm), on the CPU."""
    x = to_tensor(image, model.device)
    (feat,) = model.vit.forward_intermediates(
        x, indices=[block % model.depth], norm=post_norm, output_fmt="NCHW", intermediates_only=True, stop_early=True
    )
    return feat[0].permute(1, 2, 0).float().cpu()


def fit_pca(x: torch.Tensor, k: int = 3):
    """(N, C) -> (mean (C,), components (C, k), explained variance ratio (k,)), from the eigenvectors
    of the (C, C) covariance in float64 (memory independent of N). Signs are fixed (the
    largest-magnitude projection is positive) so colours do not flip between runs."""
    mean = x.double().mean(0)
    xc = x.double() - mean
    evals, evecs = torch.linalg.eigh(xc.T @ xc)  # ascending
    comps = evecs[:, -k:].flip(1)
    proj = xc @ comps
    peak = proj.gather(0, proj.abs().argmax(0, keepdim=True))[0]
    comps = comps * torch.where(peak >= 0, 1.0, -1.0).to(comps)
    var = evals.flip(0).clamp(min=0)
    return mean.float(), comps.float(), (var[:k] / var.sum().clamp(min=1e-12)).float()


def _scale(v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.quantile(ref, 0.01, dim=0), torch.quantile(ref, 0.99, dim=0)
    return ((v - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)


def pca_rgb(features: Sequence[torch.Tensor], fg_threshold: Optional[float] = None, invert: bool = False) -> PCAResult:
    """Shared-basis PCA colours for a list of (rows, cols, C) feature maps."""
    shapes = [f.shape[:2] for f in features]
    flat = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
    mean, comps, explained = fit_pca(flat)
    proj = (flat - mean) @ comps
    scaled = _scale(proj, proj)
    first = scaled[:, 0]
    fg = torch.ones_like(first, dtype=torch.bool)
    if fg_threshold is not None:
        fg = first < fg_threshold if invert else first > fg_threshold
        if int(fg.sum()) >= 3:
            mean, comps, explained = fit_pca(flat[fg])
            p2 = (flat[fg] - mean) @ comps
            scaled = torch.zeros_like(proj)
            scaled[fg] = _scale(p2, p2)
        else:
            scaled = torch.zeros_like(proj)
    rgb, fgs, firsts, start = [], [], [], 0
    for h, w in shapes:
        n = h * w
        rgb.append(scaled[start:start + n].reshape(h, w, 3).numpy())
        fgs.append(fg[start:start + n].reshape(h, w).numpy())
        firsts.append(first[start:start + n].reshape(h, w).numpy())
        start += n
    return PCAResult(rgb, fgs, firsts, explained.numpy())
