from .backbone import DINOv2Backbone
from .pyramid import SimpleFeaturePyramid
from .vit import ARCHS, DINOv2VisionTransformer, ViTArch, create_dinov2_vit, interpolate_pos_embed

__all__ = [
    "ARCHS",
    "DINOv2Backbone",
    "DINOv2VisionTransformer",
    "SimpleFeaturePyramid",
    "ViTArch",
    "create_dinov2_vit",
    "interpolate_pos_embed",
]
