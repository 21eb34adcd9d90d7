"""ADE20k linear probe (DINOv2 protocol), frozen DINOv2-reg ViT-L/14, last block. See ../common/ade20k_linear.py."""
from ..common.ade20k_linear import dataloader, lr_multiplier, model, optimizer, train
from ..common.d2reg_vit import set_size

set_size(model, optimizer, "vit_large")
