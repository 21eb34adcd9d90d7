"""Cascade Mask R-CNN, DINOv3 ViT-S/16: cascade_mask_rcnn_dinov3_vit_b_100ep.py at size S."""
from .cascade_mask_rcnn_dinov3_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.arch = "vit_small"
