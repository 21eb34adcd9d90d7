"""detrex DINO, 4 scales, with the original register-free DINOv2 ViT-B/16 (dinov2_vitb14_pretrain.pth)."""
from ..common.d2reg_vit import without_registers
from .dino_d2reg_vit_base_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

without_registers(model)
train.output_dir = "./output/dino_d2reg_vit_base_noreg_4scale_12ep"
dataloader.evaluator.output_dir = train.output_dir
