"""DINOv2 ViTs (with and without registers) built on timm's VisionTransformer.

Only what timm lacks is written here: the official DINOv2 position-embedding interpolation at run
time (:func:`d2reg.vit.pos_embed.interpolate_pos_embed`) and the constructor from an architecture.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer

from .arch import PRETRAIN_IMG_SIZE, PRETRAIN_PATCH_SIZE, ViTArch, get_arch, swiglu_hidden_features
from .patch_embed import PatchEmbed
from .pos_embed import interpolate_pos_embed, interpolate_pos_embed_by_matrices
from .tracing import is_exporting

__all__ = ["DINOv2VisionTransformer", "create_dinov2_vit"]


class DINOv2VisionTransformer(VisionTransformer):
    """timm's VisionTransformer with DINOv2's own position-embedding interpolation.

    timm resamples with antialiased bicubic for every model, which matches the official register
    models but not the register-free ones at non-native sizes. ``legacy_pos_interp`` selects the
    official register-free path. The patch grid adapts to any input size; inputs whose sides are
    not a multiple of the patch size are zero-padded on the bottom/right (as detectron2 pads).
    """

    def __init__(self, *args, legacy_pos_interp: bool = False, **kwargs):
        super().__init__(*args, dynamic_img_size=True, dynamic_img_pad=True, embed_layer=PatchEmbed, **kwargs)
        self.legacy_pos_interp = legacy_pos_interp

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w, C) patch embeddings -> (B, prefix + h*w, C) tokens ``[CLS, reg..., patches]``."""
        B, h, w, C = x.shape
        x = x.reshape(B, h * w, C)
        # an exported graph recomputes the resize for each input size (see bicubic_resize_matrix)
        resize = interpolate_pos_embed_by_matrices if is_exporting() else interpolate_pos_embed
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(B, -1, -1))
        if self.no_embed_class:  # register models: registers and CLS carry no position
            x = x + resize(self.pos_embed, (h, w), self.legacy_pos_interp)
            return self.pos_drop(torch.cat(prefix + [x], dim=1))
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        x = x + resize(patch_pos, (h, w), self.legacy_pos_interp)
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
