"""Cascade Mask R-CNN (ViTDet's 3-stage LN cascade), DINOv2-reg ViT-S/16."""
from ..common.coco_vitdet import to_cascade
from .mask_rcnn_vit_s_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_cascade(model)
