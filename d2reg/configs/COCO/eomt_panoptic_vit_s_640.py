"""EoMT, DINOv2-reg ViT-S/16, COCO panoptic at 640: eomt_panoptic_vit_l_640.py with ``arch="vit_small"``
(3 query blocks and its weights follow)."""
from .eomt_panoptic_vit_l_640 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.arch = "vit_small"
