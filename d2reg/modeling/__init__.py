from .backbone import DINOv2Backbone
from .pyramid import SimpleFeaturePyramid, build_d2reg_sfp_backbone
from .semseg import LinearSemSegHead, build_d2reg_vit_backbone
from .vit import ARCHS, DINOv2VisionTransformer, ViTArch, create_dinov2_vit, interpolate_pos_embed

__all__ = [
    "ARCHS",
    "DINOv2Backbone",
    "DINOv2VisionTransformer",
    "LinearSemSegHead",
    "SimpleFeaturePyramid",
    "ViTArch",
    "build_d2reg_sfp_backbone",
    "build_d2reg_vit_backbone",
    "create_dinov2_vit",
    "interpolate_pos_embed",
]
