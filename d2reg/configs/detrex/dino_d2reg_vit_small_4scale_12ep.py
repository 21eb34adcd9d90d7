"""detrex DINO, 4 scales, with a d2reg DINOv2-reg ViT-S/16 pyramid: the ViT-B config at size S (drop path,
layer decay and weights follow ``arch``, d2reg.recipes)."""
from .dino_d2reg_vit_base_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.arch = "vit_small"
train.output_dir = "./output/dino_d2reg_vit_small_4scale_12ep"
dataloader.evaluator.output_dir = train.output_dir
