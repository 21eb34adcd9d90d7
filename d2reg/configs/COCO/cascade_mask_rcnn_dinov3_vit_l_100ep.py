"""Cascade Mask R-CNN, DINOv3 ViT-L/16: cascade_mask_rcnn_dinov3_vit_b_100ep.py at size L."""
from .cascade_mask_rcnn_dinov3_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.arch = "vit_large"
