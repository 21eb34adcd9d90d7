"""detectron2 modules: the family backbones, the simple feature pyramid, the linear sem-seg head,
each YACS builder beside its class. Builds on :mod:`d2reg.vit` and :mod:`d2reg.checkpoint`."""
from .backbone import DINOv2Backbone
from .dinov3_backbone import DINOv3Backbone
from .families import BACKBONE_FAMILIES, vit_backbone_from_config
from .pyramid import SimpleFeaturePyramid, build_d2reg_sfp_backbone
from .semseg import LinearSemSegHead, build_d2reg_vit_backbone
from .vit_backbone import ViTBackbone

__all__ = [
    "BACKBONE_FAMILIES",
    "DINOv3Backbone",
    "DINOv2Backbone",
    "LinearSemSegHead",
    "SimpleFeaturePyramid",
    "ViTBackbone",
    "build_d2reg_sfp_backbone",
    "build_d2reg_vit_backbone",
    "vit_backbone_from_config",
]
