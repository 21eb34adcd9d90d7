"""Cascade Mask R-CNN, DINOv3 ViT-H+/16: cascade_mask_rcnn_dinov3_vit_b_100ep.py at size H+, activation
checkpointing on (memory: see mask_rcnn_dinov3_vit_hplus_100ep.py)."""
from .cascade_mask_rcnn_dinov3_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.arch = "vit_huge_plus"
model.backbone.net.use_act_checkpoint = True
