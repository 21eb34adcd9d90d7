"""detectron2 modules: the family backbones, the simple and multi-layer feature pyramids, the linear
sem-seg head (which reads several blocks with the multi-layer pyramid's reader), the EoMT
meta-architecture, each YACS builder beside its class. Builds on :mod:`d2reg.vit` and :mod:`d2reg.checkpoint`."""
from .backbone import DINOv2Backbone
from .dinov3_backbone import DINOv3Backbone
from .eomt import EOMT_TASKS, EoMT, ScaleBlock, default_num_blocks
from .families import BACKBONE_FAMILIES, vit_backbone_from_config
from .multilayer import MultiLayerReader, default_in_blocks, evenly_spaced_blocks
from .pyramid import MultiLayerFeaturePyramid, SimpleFeaturePyramid, build_d2reg_sfp_backbone
from .semseg import LinearSemSegHead, build_d2reg_vit_backbone
from .vit_backbone import ViTBackbone

__all__ = [
    "BACKBONE_FAMILIES",
    "DINOv3Backbone",
    "DINOv2Backbone",
    "EOMT_TASKS",
    "EoMT",
    "LinearSemSegHead",
    "MultiLayerFeaturePyramid",
    "MultiLayerReader",
    "ScaleBlock",
    "SimpleFeaturePyramid",
    "ViTBackbone",
    "build_d2reg_sfp_backbone",
    "build_d2reg_vit_backbone",
    "default_num_blocks",
    "default_in_blocks",
    "evenly_spaced_blocks",
    "vit_backbone_from_config",
]
