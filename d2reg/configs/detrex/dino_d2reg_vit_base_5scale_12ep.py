"""detrex DINO, 5 scales (p2-p6), with a d2reg DINOv2-reg ViT-B/16 pyramid: the 4-scale config plus
the 4x (stride 4) level."""
from d2reg.detrex import match_neck_to_backbone

from .dino_d2reg_vit_base_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.scale_factors = (4.0, 2.0, 1.0, 0.5)
match_neck_to_backbone(model)  # p2-p6: neck.input_shapes / in_features / num_outs, num_feature_levels 5

train.output_dir = "./output/dino_d2reg_vit_base_5scale_12ep"
dataloader.evaluator.output_dir = train.output_dir
