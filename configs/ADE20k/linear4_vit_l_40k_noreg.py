"""Register-free DINOv2 ViT-L/14 (dinov2_vitl14_pretrain.pth): linear4_vit_l_40k.py with registers off."""
from ..common.d2reg_vit import without_registers
from .linear4_vit_l_40k import dataloader, lr_multiplier, model, optimizer, train

without_registers(model)
