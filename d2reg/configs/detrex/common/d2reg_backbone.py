"""The d2reg part of the detrex DINO configs; loads without detrex (the tests use it directly).

``backbone``: the project's DINOv2-reg ViT-B/16 (configs/common/d2reg_vit.py: 14-px kernels
resampled to 16 px, drop path and official checkpoint under ``$D2REG_CHECKPOINTS`` following ``arch``) inside d2reg's
``SimpleFeaturePyramid`` with scale factors (2, 1, 0.5) + ``LastLevelMaxPool``: p3-p6 (strides 8-64,
256 channels), the levels of DINO's 4-scale setting. The 5-scale config adds 4.0 (p2-p6).

No square padding: detrex's DINO pads a batch only to its largest image (it does not read
``padding_constraints``), and its COCO loader resizes to up to 1333 px, beyond ViTDet's 1024 square.
"""
from ...common.d2reg_vit import dinov2_vit, sfp

backbone = sfp(dinov2_vit("vit_base"), square_pad=0)
backbone.scale_factors = (2.0, 1.0, 0.5)
