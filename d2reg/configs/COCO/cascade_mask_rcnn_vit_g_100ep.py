"""Cascade Mask R-CNN (ViTDet's 3-stage LN cascade), DINOv2-reg ViT-g/16."""
from ..common.coco_vitdet import to_cascade
from .mask_rcnn_vit_g_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_cascade(model)
