"""ADE20k linear probe on the last 4 blocks concatenated, frozen DINOv2-reg ViT-L/14."""
from ..common.ade20k_linear import last_four_blocks
from .linear_vit_l_40k import dataloader, lr_multiplier, model, optimizer, train

last_four_blocks(model)
