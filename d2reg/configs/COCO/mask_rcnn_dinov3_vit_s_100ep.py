"""Mask R-CNN, DINOv3 ViT-S/16: mask_rcnn_dinov3_vit_b_100ep.py at size S (drop path, layer decay, weights follow)."""
from .mask_rcnn_dinov3_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.arch = "vit_small"
