"""EoMT, DINOv3 ViT-B/16, COCO panoptic at 640, 24 epochs (the official DINOv3 S/B configs are 2x)."""
from d2reg.recipes import eomt_max_iter

from .eomt_panoptic_dinov3_vit_l_640 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.arch = "vit_base"
train.max_iter = eomt_max_iter("dinov3", "coco", 16, epochs=24)
