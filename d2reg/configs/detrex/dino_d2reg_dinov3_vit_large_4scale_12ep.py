"""detrex DINO, 4 scales, with a d2reg DINOv3 ViT-L/16 pyramid: the DINOv3 ViT-B config at size L."""
from .dino_d2reg_dinov3_vit_base_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.arch = "vit_large"
train.output_dir = "./output/dino_d2reg_dinov3_vit_large_4scale_12ep"
dataloader.evaluator.output_dir = train.output_dir
