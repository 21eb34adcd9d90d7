"""The d2reg part of the detrex DINO configs; loads without detrex (tests use it directly).

``backbone``: a DINOv2-reg ViT-B/16 (14-px kernels resampled to 16 px) inside d2reg's
``SimpleFeaturePyramid``: scale factors (2, 1, 0.5) + ``LastLevelMaxPool`` give p3-p6 (strides
8-64, 256 channels), the 4 levels of DINO's 4-scale setting. For 5 scales add 4.0 (p2-p6).

Pretrained weights come through ``net.weights`` (a local file in any layout d2reg reads: official
``dinov2_vitb14_reg4_pretrain.pth``, timm, Hugging Face, or a d2reg detectron2 checkpoint), NOT
through ``train.init_checkpoint``: detrex's train_net.py loads that with detectron2's checkpointer,
which silently skips every key of an official DINOv2 file.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from d2reg import DINOv2Backbone, SimpleFeaturePyramid

backbone = L(SimpleFeaturePyramid)(
    net=L(DINOv2Backbone)(
        arch="vit_base",
        num_register_tokens=4,  # 0 for the original register-free DINOv2
        patch_size=16,  # power-of-two strides for the pyramid; the 14-px kernels are resampled
        weights="/path/to/dinov2_vitb14_reg4_pretrain.pth",
        drop_path_rate=0.1,
        use_act_checkpoint=False,
    ),
    in_feature="last_feat",
    out_channels=256,
    scale_factors=(2.0, 1.0, 0.5),
    top_block=L(LastLevelMaxPool)(),
    norm="LN",
    square_pad=0,
)

# Parameters that get no weight decay (optimizer.params.overrides): position embedding and the
# CLS / register tokens of timm's ViT; norms get none through detrex's weight_decay_norm=0.0.
no_weight_decay = {name: {"weight_decay": 0.0} for name in ("pos_embed", "cls_token", "reg_token")}
