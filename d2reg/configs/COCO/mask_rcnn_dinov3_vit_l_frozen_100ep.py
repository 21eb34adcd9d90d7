"""Mask R-CNN on a FROZEN DINOv3 ViT-L/16, multi-layer concat (blocks 5, 11, 17, 23):
mask_rcnn_vit_l_frozen_100ep.py with mask_rcnn_dinov3_vit_l_100ep.py's backbone."""
from ..common.multilayer import frozen, multilayer
from .mask_rcnn_dinov3_vit_l_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone = multilayer(frozen(model.backbone))
