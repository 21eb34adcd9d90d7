"""Shared helpers for the training-tool tests: load tools/*.py as modules, tiny configs."""
import importlib.util
import os

from d2reg.model_zoo import CONFIGS_DIR
from d2reg.testing import TINY_TRAIN_ARCH

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = str(CONFIGS_DIR / "demo")  # the packaged demo configs (configs/ in a clone links to them)
TINY_DATA = dict(num_train=8, num_val=4, image_size=64, seed=3)

# The tiny ViT-reg of d2reg.testing.TINY_TRAIN_ARCH and slim heads at 64 px: the demo configs, made tiny.
TINY_YACS = [
    *(x for k, v in TINY_TRAIN_ARCH.items() for x in (f"MODEL.D2REG.{k.upper()}", str(v))),
    "MODEL.D2REG.SFP.OUT_CHANNELS", "32",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.001",
    "DATALOADER.NUM_WORKERS", "0", "SEED", "7",
]
TINY_INSTANCE = TINY_YACS + [
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "TEST.DETECTIONS_PER_IMAGE", "20",
]
TINY_SEM_SEG = TINY_YACS + ["MODEL.SEM_SEG_HEAD.CONVS_DIM", "32"]

# The LazyConfig demo (configs/demo/mask_rcnn_vit_tiny_synth.py), made tiny the same way.
LAZY_TINY = [
    *(f"model.backbone.net.{k}={v}" for k, v in TINY_TRAIN_ARCH.items()),
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
    "dataloader.train.mapper.augmentations.0.short_edge_length=64",
    "dataloader.train.mapper.augmentations.0.max_size=64",
    "dataloader.test.mapper.augmentations.0.short_edge_length=64",
    "dataloader.test.mapper.augmentations.0.max_size=64",
    "model.roi_heads.batch_size_per_image=16", "model.proposal_generator.batch_size_per_image=32",
    "train.seed=7", "train.max_iter=4", "train.checkpointer.period=2",
]


def load_tool(name: str):
    """tools/<name>.py (the shim over d2reg.tools.<name>) as a module (a ``tools`` package from site-packages may
    shadow the folder)."""
    spec = importlib.util.spec_from_file_location(f"d2reg_tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(tool, config: str, *opts: str, flags=()):
    from detectron2.engine import default_argument_parser

    return default_argument_parser().parse_args(["--config-file", os.path.join(DEMO, config), *flags, *opts])
