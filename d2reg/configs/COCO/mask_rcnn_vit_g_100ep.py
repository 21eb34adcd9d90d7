"""Mask R-CNN, DINOv2-reg ViT-g/16: mask_rcnn_vit_b_100ep.py at size g (drop path, layer decay, weights follow)."""
from .mask_rcnn_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.backbone.net.arch = "vit_giant2"
model.backbone.net.use_act_checkpoint = True  # ViT-g at 1024x1024, global attention: recompute activations
