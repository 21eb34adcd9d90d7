"""Shared, generic fixtures (the tiny model of :mod:`d2reg.testing`, a tmp checkpoint writer, a tiny
Mask R-CNN config) and the ``--runslow`` option for tests marked ``slow``.

Keep this file small; test-specific helpers belong in the test files that use them.
"""
from __future__ import annotations

import os
import sys

import pytest

from d2reg.testing import TINY_ARCH, TINY_IMG, write_random_checkpoint

sys.path.insert(0, os.path.dirname(__file__))  # tests/official_reference.py, tests/_tools.py


# ------------------------------------------------------------------ the `slow` marker (pyproject.toml)
def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.slow`` tests unless ``--runslow`` (pytest's documented pattern): plain
    ``pytest tests`` (``make test``) runs the default set and lists the skipped ones under ``-ra``."""
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with pytest --runslow")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture
def tiny_kwargs():
    """DINOv2Backbone kwargs for the tiny model (:data:`d2reg.testing.TINY_ARCH`, position grid 16x16)."""
    return dict(TINY_ARCH, pretrain_img_size=TINY_IMG)


@pytest.fixture
def write_ckpt(tmp_path):
    """``write_ckpt(name, layout="official", arch="vit_small", num_register_tokens=4, seed=0,
    img_size=224, **arch_overrides) -> (path, official_state_dict)``: a random tiny checkpoint under
    tmp_path, written by :func:`d2reg.testing.write_random_checkpoint` (the suffix picks the file type)."""

    def write(name, layout="official", arch="vit_small", num_register_tokens=4, seed=0, img_size=TINY_IMG,
              **overrides):
        path = str(tmp_path / name)
        sd = write_random_checkpoint(path, layout, arch, num_register_tokens, seed=seed, img_size=img_size,
                                     **dict(TINY_ARCH, **overrides))
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
