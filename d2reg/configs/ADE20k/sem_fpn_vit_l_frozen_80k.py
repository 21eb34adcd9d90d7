"""ADE20k semantic FPN on a FROZEN DINOv2-reg ViT-L/16, multi-layer concat (blocks 5, 11, 17, 23, each
LayerNorm-ed): sem_fpn_vit_l_80k.py with the multi-layer pyramid (p2-p5), only pyramid and head training
(see docs/configs.md, "Multi-layer and frozen recipes")."""
from ..common.multilayer import frozen, multilayer
from .sem_fpn_vit_l_80k import dataloader, lr_multiplier, model, optimizer, train

model.backbone = multilayer(frozen(model.backbone))
