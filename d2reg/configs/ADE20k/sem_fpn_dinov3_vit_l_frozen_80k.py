"""ADE20k semantic FPN on a FROZEN DINOv3 ViT-L/16, multi-layer concat (blocks 5, 11, 17, 23):
sem_fpn_vit_l_frozen_80k.py with sem_fpn_dinov3_vit_l_80k.py's backbone."""
from ..common.multilayer import frozen, multilayer
from .sem_fpn_dinov3_vit_l_80k import dataloader, lr_multiplier, model, optimizer, train

model.backbone = multilayer(frozen(model.backbone))
