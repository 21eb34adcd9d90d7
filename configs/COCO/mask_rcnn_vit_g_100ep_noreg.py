"""Register-free DINOv2 ViT-g/16 (dinov2_vitg14_pretrain.pth): mask_rcnn_vit_g_100ep.py with registers off."""
from ..common.d2reg_vit import without_registers
from .mask_rcnn_vit_g_100ep import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

without_registers(model)
