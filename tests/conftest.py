"""Shared, generic fixtures: tiny architecture numbers and a tmp checkpoint writer.

Keep this file small; test-specific helpers belong in the test files that use them.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/official_reference.py


# Tiny random models: 32-wide, 2 blocks, 2 heads; position grid 16x16 (224 px at patch 14).
TINY_ARCH = dict(embed_dim=32, depth=2, num_heads=2)
TINY_IMG = 224


@pytest.fixture
def tiny_kwargs():
    """DINOv2Backbone kwargs for a tiny model whose stored position grid is 16x16 (224 px / 14)."""
    return dict(TINY_ARCH, pretrain_img_size=TINY_IMG)


@pytest.fixture
def write_ckpt(tmp_path):
    """``write_ckpt(name, layout="official", arch="vit_small", num_register_tokens=4, seed=0,
    img_size=224, **arch_overrides) -> (path, official_state_dict)``: a random tiny checkpoint in
    ``layout`` under tmp_path: "official"; "timm" (converted by timm's checkpoint filter); "hf" (the
    tensors transformers' save_pretrained writes). The suffix picks torch.save or safetensors."""
    from d2reg.checkpoint.formats import official_to_timm
    from d2reg.checkpoint.testing import hf_saved_state_dict, official_to_hf_model, random_official_state_dict

    def write(name, layout="official", arch="vit_small", num_register_tokens=4, seed=0, img_size=TINY_IMG,
              **overrides):
        spec = dict(TINY_ARCH, **overrides)
        sd = random_official_state_dict(arch, num_register_tokens, img_size=img_size, seed=seed, **spec)
        if layout == "official":
            out = sd
        elif layout == "timm":
            out = official_to_timm(dict(sd))
        elif layout == "hf":
            out = hf_saved_state_dict(official_to_hf_model(sd, spec["num_heads"], img_size=img_size))
        else:
            raise ValueError(layout)
        path = str(tmp_path / name)
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in out.items()}, path)
        else:
            torch.save(out, path)
        return path, sd

    return write


@pytest.fixture
def tiny_maskrcnn_cfg():
    """``tiny_maskrcnn_cfg(**d2reg) -> cfg``: detectron2's model-zoo Mask R-CNN FPN config with the
    d2reg simple-feature-pyramid backbone (tiny ViT, 32 pyramid channels, small heads), on the CPU.
    Keyword arguments set ``cfg.MODEL.D2REG.<KEY>`` (e.g. ``WEIGHTS=path``, ``FREEZE_AT=1``)."""
    from detectron2.config import get_cfg

    from d2reg import add_d2reg_config
    from d2reg.zoo import get_config_file  # not detectron2.model_zoo: it needs pkg_resources

    def make(**d2reg):
        cfg = get_cfg()
        cfg.merge_from_file(get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
        add_d2reg_config(cfg)
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.BACKBONE.NAME = "build_d2reg_sfp_backbone"
        c = cfg.MODEL.D2REG
        c.EMBED_DIM, c.DEPTH, c.NUM_HEADS, c.PRETRAIN_IMG_SIZE = 32, 2, 2, TINY_IMG
        c.SFP.OUT_CHANNELS = 32
        for k, v in d2reg.items():
            setattr(c, k.upper(), v)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
        cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
        cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
        cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
        cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
        return cfg

    return make
