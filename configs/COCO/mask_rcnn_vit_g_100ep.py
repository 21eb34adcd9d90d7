"""Mask R-CNN, DINOv2-reg ViT-g/16: the ViT-B config with the g size (drop path, layer decay, weights)."""
from ..common.d2reg_vit import set_size
from .mask_rcnn_vit_b_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

set_size(model, optimizer, "vit_giant2")
# ViT-g at 1024x1024 with global attention: recompute block activations in the backward pass.
model.backbone.net.use_act_checkpoint = True
