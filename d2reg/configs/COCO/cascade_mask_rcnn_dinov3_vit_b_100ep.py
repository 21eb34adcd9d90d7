"""Cascade Mask R-CNN (ViTDet's 3-stage LN cascade), DINOv3 ViT-B/16: mask_rcnn_dinov3_vit_b_100ep.py + cascade."""
from ..common.coco_vitdet import to_cascade
from .mask_rcnn_dinov3_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_cascade(model)
