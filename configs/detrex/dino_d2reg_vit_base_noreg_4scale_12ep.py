"""detrex DINO, 4 scales, with the original register-free DINOv2 ViT-B/16 (num_register_tokens=0)."""
from .dino_d2reg_vit_base_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.num_register_tokens = 0
model.backbone.net.weights = "/path/to/dinov2_vitb14_pretrain.pth"

train.output_dir = "./output/dino_d2reg_vit_base_noreg_4scale_12ep"
dataloader.evaluator.output_dir = train.output_dir
