"""detrex DINO, 4 scales, with a d2reg DINOv2-reg ViT-L/16 pyramid: the ViT-B config at size L (drop path,
layer decay and weights follow ``arch``, d2reg.recipes)."""
from .dino_d2reg_vit_base_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.arch = "vit_large"
train.output_dir = "./output/dino_d2reg_vit_large_4scale_12ep"
dataloader.evaluator.output_dir = train.output_dir
