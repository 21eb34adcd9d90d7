"""Position- and patch-embedding resampling as the official DINOv2 code does it (what timm lacks)."""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resample_patch_embed

__all__ = ["interpolate_pos_embed", "resize_patch_embed_weight"]


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
