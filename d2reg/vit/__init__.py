"""The timm ViTs d2reg builds on, one module per family, and the layers timm lacks.

Depends on torch and timm only (no detectron2): :mod:`d2reg.checkpoint` and :mod:`d2reg.modeling`
build on it.
"""
from .arch import (
    ARCHS,
    DINOV2_ARCHS,
    PRETRAIN_IMG_SIZE,
    PRETRAIN_PATCH_SIZE,
    ViTArch,
    arch_for_width,
    get_arch,
    heads_for_width,
    resolve_block_indices,
    swiglu_hidden_features,
)
from .dinov2 import DINOv2VisionTransformer, create_dinov2_vit
from .dinov3 import (
    DINOV3_ARCHS,
    DINOv3Arch,
    create_dinov3_vit,
    enable_dinov3_window_attention,
    get_dinov3_arch,
    materialize_dinov3_vit,
)
from .pos_embed import interpolate_pos_embed, resize_patch_embed_weight

__all__ = [
    "ARCHS",
    "DINOV2_ARCHS",
    "DINOV3_ARCHS",
    "DINOv3Arch",
    "DINOv2VisionTransformer",
    "PRETRAIN_IMG_SIZE",
    "PRETRAIN_PATCH_SIZE",
    "ViTArch",
    "arch_for_width",
    "create_dinov2_vit",
    "create_dinov3_vit",
    "enable_dinov3_window_attention",
    "get_dinov3_arch",
    "materialize_dinov3_vit",
    "get_arch",
    "heads_for_width",
    "interpolate_pos_embed",
    "resize_patch_embed_weight",
    "resolve_block_indices",
    "swiglu_hidden_features",
]
