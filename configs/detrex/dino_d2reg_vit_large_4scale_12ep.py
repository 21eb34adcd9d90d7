"""detrex DINO, 4 scales, with a d2reg DINOv2-reg ViT-L/16 pyramid (the ViT-B config, larger net;
drop path 0.4 and lr decay 0.8 over 24 blocks as detrex's ViTDet-L / EVA-02-L DINO configs)."""
from functools import partial

from d2reg import lr_decay_rate

from .dino_d2reg_vit_base_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.net.arch = "vit_large"
model.backbone.net.weights = "/path/to/dinov2_vitl14_reg4_pretrain.pth"
model.backbone.net.drop_path_rate = 0.4
optimizer.params.lr_factor_func = partial(lr_decay_rate, lr_decay_rate=0.8, num_layers=24)

train.output_dir = "./output/dino_d2reg_vit_large_4scale_12ep"
dataloader.evaluator.output_dir = train.output_dir
