"""detrex DINO, 4 scales, with a d2reg DINOv2-reg ViT-S/16 pyramid (the ViT-B config, smaller net;
12 blocks, so the same drop path and lr decay)."""
from .dino_d2reg_vit_base_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.arch = "vit_small"
model.backbone.net.weights = "/path/to/dinov2_vits14_reg4_pretrain.pth"

train.output_dir = "./output/dino_d2reg_vit_small_4scale_12ep"
dataloader.evaluator.output_dir = train.output_dir
