"""detrex DINO, 4 scales (p3-p6), 12 epochs, with a d2reg DINOv2-reg ViT-B/16 simple feature pyramid.

Runs inside a detrex checkout (README, section "detrex"):
    cd /path/to/detrex && PYTHONPATH=/path/to/d2reg python tools/train_net.py --num-gpus 8 \
        --config-file /path/to/d2reg/configs/detrex/dino_d2reg_vit_base_4scale_12ep.py \
        model.backbone.net.weights=/path/to/dinov2_vitb14_reg4_pretrain.pth

Follows detrex's projects/dino/configs/dino-vitdet/ (detectron2 ViT in a SimpleFeaturePyramid) and
dino-eva-02/ (layer-wise lr decay) configs: detrex's DINO recipe (AdamW lr 1e-4, weight decay 1e-4,
gradient clipping at 0.1, 12 epochs at batch 16) plus a linear warm-up, without which ViTDet-DINO
trains unstably. Drop path, layer decay and weights follow ``model.backbone.net.arch`` /
``num_register_tokens`` (d2reg.recipes): ``model.backbone.net.num_register_tokens=0`` for the register-free
DINOv2 (dinov2_vitb14_pretrain.pth).
"""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detrex.config import get_config
from fvcore.common.param_scheduler import MultiStepParamScheduler

from d2reg.detrex import load_detrex_config, match_neck_to_backbone

from ..common.optim_train import use_d2reg_param_groups
from .common.d2reg_backbone import backbone

# detrex's DINO (ResNet-50 config), with the backbone swapped and the neck derived from it:
# neck.input_shapes / in_features / num_outs and transformer.num_feature_levels (4: p3-p6).
model = load_detrex_config("projects/dino/configs/models/dino_r50.py").model
model.backbone = backbone
match_neck_to_backbone(model)

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
train = get_config("common/train.py").train

# DINOv2 weights load through model.backbone.net.weights (any layout). train.init_checkpoint goes
# through detectron2's checkpointer: only a detectron2 .pth whose keys match this model
# (backbone.net.vit.*, e.g. from tools/convert_checkpoint.py, or a d2reg/detrex model_final.pth).
train.init_checkpoint = ""
train.output_dir = "./output/dino_d2reg_vit_base_4scale_12ep"
train.max_iter = 90000
train.eval_period = 5000
train.log_period = 20
train.checkpointer.period = 5000

# gradient clipping
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2

# DINO's training forward calls .cuda() (denoising queries): on CPU only inference runs.
train.device = "cuda"
model.device = train.device

# 12 epochs at batch 16, lr x0.1 after 11, linear warm-up over the first 1000 iterations
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[82500, 90000]),
    warmup_length=1000 / train.max_iter,
    warmup_method="linear",
    warmup_factor=0.001,
)

# AdamW with the recipe's layer-wise lr decay over the ViT blocks (tokens/embeddings decay most; pyramid,
# neck, transformer and heads get the full lr), no weight decay on position embedding and tokens (norms
# get none through detrex's weight_decay_norm=0.0): d2reg.solver.get_d2reg_optimizer_params.
optimizer.lr = 1e-4
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 1e-4
use_d2reg_param_groups(optimizer)

# total batch size over all GPUs
dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 16
dataloader.evaluator.output_dir = train.output_dir
