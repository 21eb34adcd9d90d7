"""ADE20k linear probe (DINOv3 protocol), frozen DINOv3 ViT-7B/16: linear_dinov3_vit_b_40k.py at size 7B.
The frozen path is what a 7B fits: no gradients, no optimizer state for the ViT (only the head trains),
~27 GB of fp32 weights (~14 GB in bf16) plus inference activations at 512x512; fine-tuning it
(~108 GB of weights, gradients and AdamW state per GPU) does not fit data-parallel training."""
from .linear_dinov3_vit_b_40k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.arch = "vit_7b"
