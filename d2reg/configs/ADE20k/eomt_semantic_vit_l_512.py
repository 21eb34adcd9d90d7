"""EoMT, DINOv2-reg ViT-L/16, ADE20k semantic segmentation at 512 (official mIoU 58.4): 100 queries, 150
classes, 512 crops with scale 0.5-2.0 and colour jitter, 31 epochs at batch 16; inference on 512 windows
sliding along the longer side after the shorter is resized to 512 (the official evaluation)."""
from d2reg.recipes import eomt_max_iter

from ..common.eomt import eomt_lr_schedule, eomt_model, eomt_optimizer, eomt_train
from ..common.eomt_data import eomt_dataloader

FAMILY, DATASET = "dinov2", "ade20k"

model = eomt_model(FAMILY, DATASET, "semantic", num_classes=150, arch="vit_large")
dataloader = eomt_dataloader("semantic", "ade20k_sem_seg_train", "ade20k_sem_seg_val", input_size=512)
optimizer = eomt_optimizer(FAMILY, DATASET)
lr_multiplier = eomt_lr_schedule(FAMILY, DATASET)
train = eomt_train(FAMILY, DATASET, max_iter=eomt_max_iter(FAMILY, DATASET, 16), eval_period=4000)
