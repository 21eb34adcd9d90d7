"""EoMT, DINOv3 ViT-L/16, ADE20k semantic at 512 (official mIoU 59.5): lr 2e-4, no layer decay (the official
lr_mult 0.1 is never applied by its optimizer code), 16 epochs, the DINOv3 ADE20k annealing windows."""
from d2reg.recipes import eomt_max_iter

from ..common.eomt import to_dinov3
from .eomt_semantic_vit_l_512 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

to_dinov3(model, optimizer, lr_multiplier, train, dataset="ade20k")
train.max_iter = eomt_max_iter("dinov3", "ade20k", 16)
