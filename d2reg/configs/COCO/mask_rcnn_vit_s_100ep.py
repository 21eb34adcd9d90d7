"""Mask R-CNN, DINOv2-reg ViT-S/16: mask_rcnn_vit_b_100ep.py at size S (drop path, layer decay, weights follow)."""
from .mask_rcnn_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.arch = "vit_small"
