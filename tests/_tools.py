"""Shared helpers for the training-tool tests: load tools/*.py as modules, tiny configs."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo")
TINY_DATA = dict(num_train=8, num_val=4, image_size=64, seed=3)

# A 64-dim, 2-block ViT-reg and slim heads at 64 px: the demo configs, made tiny.
TINY_YACS = [
    "MODEL.D2REG.EMBED_DIM", "64", "MODEL.D2REG.DEPTH", "2", "MODEL.D2REG.NUM_HEADS", "2",
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
    "model.backbone.net.embed_dim=64", "model.backbone.net.depth=2", "model.backbone.net.num_heads=2",
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
    "dataloader.train.mapper.augmentations.0.short_edge_length=64",
    "dataloader.train.mapper.augmentations.0.max_size=64",
    "dataloader.test.mapper.augmentations.0.short_edge_length=64",
    "dataloader.test.mapper.augmentations.0.max_size=64",
    "model.roi_heads.batch_size_per_image=16", "model.proposal_generator.batch_size_per_image=32",
    "train.seed=7", "train.max_iter=4", "train.checkpointer.period=2",
]


def load_tool(name: str):
    """tools/<name>.py as a module (a ``tools`` package from site-packages may shadow the folder)."""
    spec = importlib.util.spec_from_file_location(f"d2reg_tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(tool, config: str, *opts: str, flags=()):
    from detectron2.engine import default_argument_parser

    return default_argument_parser().parse_args(["--config-file", os.path.join(DEMO, config), *flags, *opts])
