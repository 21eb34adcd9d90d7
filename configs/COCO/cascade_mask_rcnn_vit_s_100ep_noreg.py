"""Register-free DINOv2 ViT-S/16 (dinov2_vits14_pretrain.pth): cascade_mask_rcnn_vit_s_100ep.py with registers off."""
from ..common.d2reg_vit import without_registers
from .cascade_mask_rcnn_vit_s_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

without_registers(model)
