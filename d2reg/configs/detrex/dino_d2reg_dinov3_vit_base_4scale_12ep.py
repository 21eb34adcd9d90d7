"""detrex DINO, 4 scales (p3-p6), 12 epochs, with a d2reg DINOv3 ViT-B/16 simple feature pyramid:
dino_d2reg_vit_base_4scale_12ep.py with the backbone switched to DINOv3 (drop path, layer decay and
weights follow ``model.backbone.net.arch`` from d2reg.recipes' DINOv3 rows; the pyramid's outputs, and
so the neck, are unchanged). Weights: $D2REG_CHECKPOINTS/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth
(DINOv3 License)."""
from ..common.d2reg_vit import dinov3_vit
from .dino_d2reg_vit_base_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net = dinov3_vit("vit_base")
train.output_dir = "./output/dino_d2reg_dinov3_vit_base_4scale_12ep"
dataloader.evaluator.output_dir = train.output_dir
