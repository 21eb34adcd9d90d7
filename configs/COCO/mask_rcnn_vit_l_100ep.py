"""Mask R-CNN, DINOv2-reg ViT-L/16: the ViT-B config with the L size (drop path, layer decay, weights)."""
from ..common.d2reg_vit import set_size
from .mask_rcnn_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

set_size(model, optimizer, "vit_large")
