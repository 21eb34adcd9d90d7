"""Register-free DINOv2 ViT-L/16 (dinov2_vitl14_pretrain.pth): sem_fpn_vit_l_80k.py with registers off."""
from ..common.d2reg_vit import without_registers
from .sem_fpn_vit_l_80k import dataloader, lr_multiplier, model, optimizer, train

without_registers(model)
