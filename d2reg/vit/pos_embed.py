"""Position- and patch-embedding resampling as the official DINOv2 code does it (what timm lacks).

:func:`interpolate_pos_embed` runs PyTorch's ``F.interpolate`` (the official computation).
:func:`bicubic_resize_matrix` writes the same 1-D resampling as a ``(n_out, n_in)`` matrix from
elementwise operations only, so that an exported graph (ONNX) recomputes it for every input size: the
antialiased bicubic of ``_upsample_bicubic2d_aa`` has no ONNX operator, and the scale-factor path of the
register-free models is not "resize to a size". Both separable resamplings equal
``W_rows @ table @ W_cols^T`` (to float rounding, ~1e-6 of the table's scale).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resample_patch_embed

__all__ = [
    "bicubic_resize_matrix", "interpolate_pos_embed", "interpolate_pos_embed_by_matrices", "resize_patch_embed_weight",
]


def interpolate_pos_embed(
    patch_pos_embed: torch.Tensor, grid: Tuple[int, int], legacy_offset: bool
) -> torch.Tensor:
    """Resample patch position embeddings to a new grid exactly as the official DINOv2 code does.

    Args:
        patch_pos_embed: (1, M*M, C) position embeddings of the patch tokens only (no CLS row).
        grid: target (rows, cols) of the patch grid.
        legacy_offset: True for the register-free models (bicubic, no antialias,
            ``scale_factor=((rows + 0.1) / M, (cols + 0.1) / M)``); False for the register models
            (bicubic with antialias, by target size; identical to timm's ``resample_abs_pos_embed``).

    Returns:
        (1, rows*cols, C) in the input's dtype (the interpolation itself runs in float32).
    """
    num_pos, dim = patch_pos_embed.shape[1], patch_pos_embed.shape[2]
    side = int(math.sqrt(num_pos))
    if side * side != num_pos:
        raise ValueError(f"position embedding has {num_pos} patch rows, not a square grid.")
    if tuple(grid) == (side, side):
        return patch_pos_embed
    if not legacy_offset:
        return resample_abs_pos_embed(patch_pos_embed, new_size=grid, old_size=(side, side), num_prefix_tokens=0)
    x = patch_pos_embed.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    # The 0.1 offset is the official code's guard against float error in the output size; the
    # scale factor (not the size) also sets the sampling positions, so both must be kept as is.
    scale = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
    x = F.interpolate(x, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(x.shape[-2:]) != tuple(grid):
        raise RuntimeError(f"position-embedding interpolation gave {tuple(x.shape[-2:])}, expected {grid}")
    return x.permute(0, 2, 3, 1).reshape(1, -1, dim).to(patch_pos_embed.dtype)


def _cubic_weight(x: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel at distances ``x`` (any shape), parameter ``a``."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def bicubic_resize_matrix(n_out: Union[int, torch.Tensor], n_in: int, legacy_offset: bool,
                          device: Optional[torch.device] = None) -> torch.Tensor:
    """The ``(n_out, n_in)`` float32 matrix of PyTorch's 1-D bicubic resampling of ``n_in`` samples.

    ``legacy_offset=False``: ``F.interpolate(size=n_out, mode="bicubic", antialias=True)`` (the kernel
    with ``a=-0.5``, widened by the scale when shrinking, rows normalised; exactly the identity at
    ``n_out == n_in``). ``legacy_offset=True``: ``F.interpolate(scale_factor=(n_out + 0.1) / n_in,
    mode="bicubic")`` (``a=-0.75``, source ``(i + 0.5) / s - 0.5``, border samples repeated; not the
    identity at ``n_out == n_in``: the official code skips the resize only when the whole grid is unchanged).

    ``n_out`` may be a traced size (a tensor), so an exported graph builds the matrix for each input;
    only elementwise operations, ``arange`` and a comparison are used.
    """
    n = torch.full((), n_out, dtype=torch.float64, device=device)  # not as_tensor: export would fix the size
    i = torch.arange(n_out, device=device).to(torch.float32)[:, None]  # (n_out, 1)
    j = torch.arange(n_in, device=device).to(torch.float32)[None, :]  # (1, n_in)
    if not legacy_offset:
        scale = (n_in / n).to(torch.float32)  # >= 1: shrinking, the kernel is widened by the scale (antialias)
        widen = torch.clamp(scale, min=1.0)
        w = _cubic_weight((j - scale * (i + 0.5) + 0.5) / widen, a=-0.5)
        return w / w.sum(dim=1, keepdim=True)
    # PyTorch takes the scale as 1 / scale_factor in double, then float: keep that rounding
    scale = (n_in / (n + 0.1)).to(torch.float32)
    src = (i + 0.5) * scale - 0.5  # (n_out, 1)
    x0 = torch.floor(src)
    t = src - x0
    w = torch.zeros_like(src * j)
    for k in (-1, 0, 1, 2):  # the four taps, border indices clamped (the sample repeated)
        tap = torch.clamp(x0 + k, 0, n_in - 1)
        w = w + torch.where(tap == j, _cubic_weight(t - k, a=-0.75), torch.zeros_like(w))
    return w


def _eye_like(m: torch.Tensor) -> torch.Tensor:
    """(n, k) with ones where row == column: the identity when n == k, in a shape a graph can carry."""
    n, k = m.shape
    return (torch.arange(n, device=m.device)[:, None] == torch.arange(k, device=m.device)[None, :]).to(m.dtype)


def interpolate_pos_embed_by_matrices(
    patch_pos_embed: torch.Tensor, grid: Tuple[Union[int, torch.Tensor], Union[int, torch.Tensor]],
    legacy_offset: bool,
) -> torch.Tensor:
    """:func:`interpolate_pos_embed` as ``W_rows @ table @ W_cols^T`` (:func:`bicubic_resize_matrix`):
    the form an ONNX graph evaluates at any input size. Same shapes and meaning; equal to float rounding.
    """
    num_pos, dim = patch_pos_embed.shape[1], patch_pos_embed.shape[2]
    side = int(math.sqrt(num_pos))
    if side * side != num_pos:
        raise ValueError(f"position embedding has {num_pos} patch rows, not a square grid.")
    device = patch_pos_embed.device
    rows = bicubic_resize_matrix(grid[0], side, legacy_offset, device)
    cols = bicubic_resize_matrix(grid[1], side, legacy_offset, device)
    if legacy_offset:  # the official code returns the table itself for the stored grid
        same = ((torch.full((), grid[0]) == side) & (torch.full((), grid[1]) == side)).to(torch.float32)
        rows, cols = (same * _eye_like(m) + (1 - same) * m for m in (rows, cols))
    # two matmuls with static inner shapes (an einsum's reshapes would add size guards to the graph)
    table = patch_pos_embed.float().reshape(side, side * dim)
    by_rows = (rows @ table).unflatten(1, (side, dim))  # (h, side, C)
    out = cols @ by_rows  # (w, side) @ (h, side, C) -> (h, w, C)
    return out.flatten(0, 1).unsqueeze(0).to(patch_pos_embed.dtype)


def resize_patch_embed_weight(weight: torch.Tensor, patch_size: int, method: str = "pi") -> torch.Tensor:
    """Resize a (C, 3, p, p) patch-embedding kernel to ``patch_size``.

    ``"pi"``: FlexiViT's pseudo-inverse resize (timm's ``resample_patch_embed``): the resized kernel
    applied to a resized patch gives the same token as the original kernel on the original patch.
    ``"bicubic"``: plain bicubic interpolation of the kernel (what EVA/ViTDet-H scripts did); the
    kernel's response grows by about (new/old)^2, which fine-tuning then absorbs.
    """
    if weight.shape[-1] == patch_size and weight.shape[-2] == patch_size:
        return weight
    if method == "pi":
        return resample_patch_embed(weight, [patch_size, patch_size], interpolation="bicubic", antialias=True)
    if method == "bicubic":
        out = F.interpolate(weight.float(), size=(patch_size, patch_size), mode="bicubic", align_corners=False)
        return out.to(weight.dtype)
    raise ValueError(f"patch_resize must be 'pi' or 'bicubic', got {method!r}.")
