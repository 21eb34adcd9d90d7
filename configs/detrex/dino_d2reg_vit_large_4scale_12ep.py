"""detrex DINO, 4 scales, with a d2reg DINOv2-reg ViT-L/16 pyramid: the ViT-B config with the L size
(drop path, layer decay over 24 blocks, weights; configs/common/d2reg_vit.py)."""
from ..common.d2reg_vit import set_size
from .dino_d2reg_vit_base_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

set_size(model, optimizer, "vit_large")
train.output_dir = "./output/dino_d2reg_vit_large_4scale_12ep"
dataloader.evaluator.output_dir = train.output_dir
