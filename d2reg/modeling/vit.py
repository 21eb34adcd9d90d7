"""DINOv2 ViTs (with and without registers) built on timm's VisionTransformer.

Only what timm lacks is written here: the architecture table, the official DINOv2 position-embedding
interpolation (two variants, see :func:`interpolate_pos_embed`) and a patch-embedding resize option.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SwiGLUPacked, resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import VisionTransformer

__all__ = [
    "ARCHS",
    "ViTArch",
    "DINOv2VisionTransformer",
    "create_dinov2_vit",
    "interpolate_pos_embed",
    "resolve_block_indices",
    "resize_patch_embed_weight",
    "swiglu_hidden_features",
]

PRETRAIN_PATCH_SIZE = 14
PRETRAIN_IMG_SIZE = 518  # DINOv2's pre-training resolution: a 37x37 grid of 14-px patches


@dataclass(frozen=True)
class ViTArch:
    """Shape of a DINOv2 ViT (the numbers timm's ``vit_*_patch14_*dinov2`` models use)."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    swiglu: bool = False

    def replace(self, **overrides) -> ViTArch:
        values = {k: v for k, v in overrides.items() if v is not None}
        return ViTArch(**{**self.__dict__, **values})


ARCHS: Dict[str, ViTArch] = {
    "vit_small": ViTArch("vit_small", 384, 12, 6),
    "vit_base": ViTArch("vit_base", 768, 12, 12),
    "vit_large": ViTArch("vit_large", 1024, 24, 16),
    "vit_giant2": ViTArch("vit_giant2", 1536, 40, 24, swiglu=True),
}


def get_arch(arch: Union[str, ViTArch], **overrides) -> ViTArch:
    """Look up ``arch`` in :data:`ARCHS`; ``overrides`` (embed_dim, depth, num_heads) that are not
    None replace the table's numbers (tiny test models, truncated models)."""
    if isinstance(arch, ViTArch):
        return arch.replace(**overrides)
    if arch not in ARCHS:
        raise ValueError(f"Unknown arch {arch!r}: choose one of {sorted(ARCHS)}.")
    spec = ARCHS[arch].replace(**overrides)
    if spec.embed_dim % spec.num_heads:
        raise ValueError(f"embed_dim {spec.embed_dim} is not divisible by num_heads {spec.num_heads}.")
    return spec


def resolve_block_indices(indices: Sequence[int], depth: int, what: str = "out_indices") -> List[int]:
    """Sorted absolute block indices (negative ones count from the end); a clear error for an empty
    list, an index out of range or a block named twice."""
    if isinstance(indices, int) or not len(indices):
        raise ValueError(f"{what} must be a non-empty sequence of block indices, got {indices!r}.")
    take = [i + depth if i < 0 else i for i in indices]
    for i, j in zip(indices, take):
        if not 0 <= j < depth:
            raise ValueError(f"{what} entry {i} is out of range for a {depth}-block ViT.")
    if len(set(take)) != len(take):
        raise ValueError(f"{what} {tuple(indices)} name the same block twice.")
    return sorted(take)


def swiglu_hidden_features(embed_dim: int) -> int:
    """Width of the official SwiGLUFFNFused hidden layer (``w3``'s input): 4096 for ViT-g."""
    return (int(4 * embed_dim * 2 / 3) + 7) // 8 * 8


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


class DINOv2VisionTransformer(VisionTransformer):
    """timm's VisionTransformer with DINOv2's own position-embedding interpolation.

    timm resamples with antialiased bicubic for every model, which matches the official register
    models but not the register-free ones at non-native sizes. ``legacy_pos_interp`` selects the
    official register-free path. The patch grid adapts to any input size; inputs whose sides are
    not a multiple of the patch size are zero-padded on the bottom/right (as detectron2 pads).
    """

    def __init__(self, *args, legacy_pos_interp: bool = False, **kwargs):
        super().__init__(*args, dynamic_img_size=True, dynamic_img_pad=True, **kwargs)
        self.legacy_pos_interp = legacy_pos_interp

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) patch embeddings -> (B, prefix + h*w, C) tokens ``[CLS, reg..., patches]``."""
        B, h, w, C = x.shape
        x = x.reshape(B, h * w, C)
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(B, -1, -1))
        if self.no_embed_class:  # register models: registers and CLS carry no position
            x = x + interpolate_pos_embed(self.pos_embed, (h, w), self.legacy_pos_interp)
            return self.pos_drop(torch.cat(prefix + [x], dim=1))
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        x = x + interpolate_pos_embed(patch_pos, (h, w), self.legacy_pos_interp)
        prefix[0] = prefix[0] + cls_pos
        return self.pos_drop(torch.cat(prefix + [x], dim=1))


def create_dinov2_vit(
    arch: Union[str, ViTArch] = "vit_small",
    num_register_tokens: int = 4,
    patch_size: int = 16,
    drop_path_rate: float = 0.0,
    pretrain_img_size: int = PRETRAIN_IMG_SIZE,
    legacy_pos_interp: Optional[bool] = None,
    layer_scale_init: float = 1e-5,
    **overrides,
) -> DINOv2VisionTransformer:
    """Build a randomly initialised DINOv2 ViT in timm's layout (weights are loaded separately).

    The position-embedding table keeps the pre-training grid (37x37 for 518 px at patch 14) whatever
    ``patch_size`` is; it is interpolated to the input's grid at run time, as in the official code.
    ``legacy_pos_interp`` defaults to the official choice: True without registers, False with.
    ``layer_scale_init`` is the LayerScale gammas' initial value: DINOv2's 1e-5 (irrelevant once
    weights are loaded); a randomly initialised model trained briefly learns far faster with ~0.1–1.
    """
    spec = get_arch(arch, **overrides)
    grid = pretrain_img_size // PRETRAIN_PATCH_SIZE
    mlp_kwargs = {}
    if spec.swiglu:
        # timm's packed SwiGLU takes int(dim * mlp_ratio) = 2 * hidden; +0.5 guards float truncation.
        hidden = 2 * swiglu_hidden_features(spec.embed_dim)
        mlp_kwargs = dict(mlp_ratio=(hidden + 0.5) / spec.embed_dim, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU)
    if legacy_pos_interp is None:
        legacy_pos_interp = num_register_tokens == 0
    return DINOv2VisionTransformer(
        img_size=grid * patch_size,
        patch_size=patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        init_values=layer_scale_init,
        reg_tokens=num_register_tokens,
        no_embed_class=num_register_tokens > 0,
        drop_path_rate=drop_path_rate,
        num_classes=0,
        legacy_pos_interp=legacy_pos_interp,
        **mlp_kwargs,
    )


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
