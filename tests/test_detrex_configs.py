"""configs/detrex: d2reg backbones in detrex (IDEA-Research/detrex) DINO LazyConfigs.

detrex is not on PyPI, so most tests run without it:
- the detrex-free part (configs/detrex/common/d2reg_backbone.py) is loaded, instantiated with tiny
  sizes and run on a batch; the dict it returns is what detrex's ChannelMapper neck receives;
- the full DINO configs are loaded against a small stand-in for detrex (written to tmp_path: the
  ``detrex.config.get_config`` entry point, ``configs/common`` train/optim/data dicts and a
  ``projects/dino/configs/models/dino_r50.py`` with the keys the configs touch), which exercises
  every line of the configs except detrex's own classes;
- without detrex, loading a full config fails on the detrex import and nothing else.
With a real detrex importable, the last test builds the whole DINO model and runs inference.
"""
from __future__ import annotations

import ast
import importlib
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList
from omegaconf import OmegaConf

from d2reg import ARCHS, DINOv3Backbone
from d2reg.detrex import backbone_output_shape, match_neck_to_backbone
from d2reg.recipes import get_recipe, official_checkpoint
from d2reg.testing import write_random_checkpoint
from d2reg.vit import DINOV3_ARCHS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "detrex"
COMMON = CONFIGS / "common" / "d2reg_backbone.py"
TINY = dict(embed_dim=32, depth=2, num_heads=2)

# full config -> (arch, pyramid levels, family); drop path / layer decay / weights from d2reg.recipes
FOUR = ["p3", "p4", "p5", "p6"]
FULL = {
    "dino_d2reg_vit_base_4scale_12ep.py": ("vit_base", FOUR, "dinov2"),
    "dino_d2reg_vit_base_5scale_12ep.py": ("vit_base", ["p2"] + FOUR, "dinov2"),
    "dino_d2reg_vit_small_4scale_12ep.py": ("vit_small", FOUR, "dinov2"),
    "dino_d2reg_vit_large_4scale_12ep.py": ("vit_large", FOUR, "dinov2"),
    "dino_d2reg_dinov3_vit_base_4scale_12ep.py": ("vit_base", FOUR, "dinov3"),
    "dino_d2reg_dinov3_vit_small_4scale_12ep.py": ("vit_small", FOUR, "dinov3"),
    "dino_d2reg_dinov3_vit_large_4scale_12ep.py": ("vit_large", FOUR, "dinov3"),
}
# the register-free DINOv2 is a command-line override of any DINOv2 one (DINOv3: always 4 storage tokens)
CASES = [(name, 4) for name in sorted(FULL)] + [("dino_d2reg_vit_base_4scale_12ep.py", 0)]
STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def tiny_backbone_cfg(scale_factors=None):
    cfg = LazyConfig.load(str(COMMON)).backbone
    cfg.net.update(TINY, weights=None)
    if scale_factors:
        cfg.scale_factors = scale_factors
    return cfg


def neck_inputs(backbone_cfg):
    """neck.input_shapes / in_features as match_neck_to_backbone derives them on a DINO-like config."""
    model = OmegaConf.create({"backbone": backbone_cfg, "neck": {}, "transformer": {}})
    match_neck_to_backbone(model)
    return model


# ---------------------------------------------------------------- detrex-free part
def test_d2reg_does_not_import_detrex_at_import_time():
    """detrex is imported only inside functions (a static check: a subprocess import costs seconds)."""
    configs = REPO / "d2reg" / "configs"  # LazyConfig files, loaded by path, never imported with the package
    for path in (REPO / "d2reg").rglob("*.py"):
        if configs in path.parents:
            continue
        tree = ast.parse(path.read_text())
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in nested:
                continue
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""] if not node.level else []
            else:
                continue
            assert not any(m.split(".")[0] == "detrex" for m in mods), f"{path}:{node.lineno} imports detrex"


def test_common_backbone_is_vit_base_reg_pyramid():
    cfg = LazyConfig.load(str(COMMON)).backbone
    net = cfg.net
    assert (net.arch, net.num_register_tokens, net.patch_size) == ("vit_base", 4, 16)
    assert tuple(cfg.scale_factors) == (2.0, 1.0, 0.5) and cfg.in_feature == "last_feat"
    # the README's command-line switch to no pretrained weights (hydra syntax: null, not None)
    assert LazyConfig.apply_overrides(cfg, ["net.weights=null"]).net.weights is None
    # the real ViT-B layout, built on the meta device (no memory, no weights file)
    shapes = backbone_output_shape(cfg)
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "p3": (256, 8), "p4": (256, 16), "p5": (256, 32), "p6": (256, 64)
    }


@pytest.mark.parametrize("scale_factors, names", [
    (None, ["p3", "p4", "p5", "p6"]),
    ((4.0, 2.0, 1.0, 0.5), ["p2", "p3", "p4", "p5", "p6"]),
])
def test_backbone_outputs_match_derived_neck_inputs(scale_factors, names):
    cfg = tiny_backbone_cfg(scale_factors)
    model = neck_inputs(cfg)
    assert list(model.neck.in_features) == names
    assert model.neck.num_outs == model.transformer.num_feature_levels == len(names)
    shapes = instantiate(model.neck.input_shapes)
    assert shapes == {n: ShapeSpec(channels=256, stride=STRIDES[n]) for n in names}

    backbone = instantiate(cfg).eval()
    assert backbone.padding_constraints["size_divisibility"] == 32
    assert backbone.size_divisibility == 32
    torch.manual_seed(0)
    images = [torch.randn(3, 128, 160), torch.randn(3, 100, 150)]  # the second is padded
    batch = ImageList.from_tensors(images, padding_constraints=backbone.padding_constraints)
    assert tuple(batch.tensor.shape) == (2, 3, 128, 160)
    with torch.no_grad():
        feats = backbone(batch.tensor)
    # what detrex's ChannelMapper receives: it indexes inputs[in_features[i]] and asserts the counts
    assert list(feats) == names
    for name, t in feats.items():
        s = shapes[name].stride
        assert tuple(t.shape) == (2, shapes[name].channels, -(-128 // s), -(-160 // s)), name
        assert torch.isfinite(t).all()


def test_unpadded_batch_like_detrex_dino():
    """detrex's DINO pads a batch only to its largest image (it does not read padding_constraints):
    the backbone takes any size and still returns every level."""
    backbone = instantiate(tiny_backbone_cfg()).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 100, 150))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
        "p3": (14, 20), "p4": (7, 10), "p5": (3, 5), "p6": (2, 3)
    }


def test_weights_load_through_backbone_config(tmp_path):
    path = str(tmp_path / "dinov2_tiny_reg4_pretrain.pth")
    write_random_checkpoint(path, "official", arch="vit_small", num_register_tokens=4, **TINY)
    cfg = tiny_backbone_cfg()
    cfg.net.update(arch="vit_small", weights=path)
    backbone = instantiate(cfg)
    info = backbone.net.checkpoint_info
    assert (info.format, info.num_register_tokens, info.patch_size) == ("official", 4, 14)
    # the keys a converted detectron2 .pth needs for train.init_checkpoint in detrex (backbone at model.backbone)
    assert any(k.startswith("net.vit.blocks.") for k in backbone.state_dict())


# ---------------------------------------------------------------- full configs, syntax and names
def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield 0, a.name, []


def _module_names(path: Path) -> set:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


# The only detrex names the configs may import (detrex/config/__init__.py exports get_config).
DETREX_NAMES = {("detrex.config", "get_config")}


@pytest.mark.parametrize("name", sorted(FULL) + ["common/d2reg_backbone.py"])
def test_configs_parse_and_import_existing_names(name):
    path = CONFIGS / name
    for level, module, names in _imports(path):
        if level:  # a relative import of another config file
            target = path.parent
            for _ in range(level - 1):
                target = target.parent
            target = target.joinpath(*module.split(".")).with_suffix(".py")
            assert target.is_file(), f"{name}: {target} missing"
            missing = set(names) - _module_names(target)
            assert not missing, f"{name}: {sorted(missing)} not defined in {target.name}"
        elif module.split(".")[0] == "detrex":
            assert {(module, n) for n in names} <= DETREX_NAMES, f"{name}: unexpected detrex import {module}"
        else:
            mod = importlib.import_module(module)
            for n in names:
                assert hasattr(mod, n), f"{name}: {module}.{n} does not exist"


# ---------------------------------------------------------------- full configs against a detrex stand-in
STUB = {
    "detrex/__init__.py": "",
    "detrex/config/__init__.py": """
        import os
        from detectron2.config import LazyConfig

        def get_config(config_path):
            return LazyConfig.load(os.path.join(os.path.dirname(__file__), "configs", config_path))
        """,
    "detrex/config/configs/common/train.py": """
        train = dict(
            output_dir="./output", init_checkpoint="", max_iter=90000, amp=dict(enabled=False),
            ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
            clip_grad=dict(enabled=False, params=dict(max_norm=0.1, norm_type=2)),
            fast_dev_run=dict(enabled=False), checkpointer=dict(period=5000, max_to_keep=100),
            eval_period=5000, log_period=20, device="cuda",
        )
        """,
    "detrex/config/configs/common/optim.py": """
        import torch
        from detectron2.config import LazyCall as L
        from detectron2.solver.build import get_default_optimizer_params

        AdamW = L(torch.optim.AdamW)(
            params=L(get_default_optimizer_params)(base_lr="${..lr}", weight_decay_norm=0.0),
            lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1,
        )
        """,
    "detrex/config/configs/common/data/coco_detr.py": """
        dataloader = dict(train=dict(num_workers=4, total_batch_size=16), test=dict(), evaluator=dict(output_dir=None))
        """,
    # the keys of detrex's DINO model config that the d2reg configs read or replace (ResNet-50 neck)
    "projects/dino/configs/models/dino_r50.py": """
        from detectron2.config import LazyCall as L
        from types import SimpleNamespace

        from detectron2.layers import ShapeSpec

        model = L(SimpleNamespace)(
            backbone=L(SimpleNamespace)(depth=50),
            neck=L(SimpleNamespace)(
                input_shapes={"res3": ShapeSpec(channels=512), "res4": ShapeSpec(channels=1024),
                              "res5": ShapeSpec(channels=2048)},
                in_features=["res3", "res4", "res5"], out_channels=256, num_outs=4,
            ),
            transformer=L(SimpleNamespace)(
                encoder=L(SimpleNamespace)(num_feature_levels="${..num_feature_levels}"),
                decoder=L(SimpleNamespace)(num_feature_levels="${..num_feature_levels}"),
                num_feature_levels=4,
            ),
            device="cuda",
        )
        """,
}


def _forget_detrex():
    for name in [m for m in sys.modules if m == "detrex" or m.startswith(("detrex.", "projects"))]:
        del sys.modules[name]


@pytest.fixture
def detrex_stub(tmp_path, monkeypatch):
    root = tmp_path / "detrex_checkout"
    for rel, text in STUB.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    monkeypatch.setattr(sys, "path", [str(root)] + sys.path)  # restored afterwards
    monkeypatch.delenv("DETREX_ROOT", raising=False)
    _forget_detrex()
    yield root
    _forget_detrex()


def _stub_train_keys(root) -> set:
    return set(LazyConfig.load(str(root / "detrex/config/configs/common/train.py")).train)


@pytest.mark.parametrize("name, regs", CASES)
def test_full_config_with_detrex_stub(name, regs, detrex_stub):
    arch, levels, family = FULL[name]
    row = get_recipe(arch, family)
    decay, num_layers = row.layer_decay, (DINOV3_ARCHS if family == "dinov3" else ARCHS)[arch].depth
    cfg = LazyConfig.load(str(CONFIGS / name))
    if family == "dinov2":
        cfg = LazyConfig.apply_overrides(cfg, [f"model.backbone.net.num_register_tokens={regs}"])
    model = cfg.model

    # backbone swapped in, neck and transformer derived from it
    net = model.backbone.net
    if family == "dinov2":
        assert (net.arch, net.num_register_tokens, net.patch_size) == (arch, regs, 16)
    else:
        assert net.arch == arch and net._target_ is DINOv3Backbone
    assert instantiate(net.drop_path_rate) == row.drop_path
    assert instantiate(net.weights) == official_checkpoint(arch, regs, family)
    assert model.backbone.square_pad == 0
    assert list(model.neck.in_features) == levels
    assert model.neck.num_outs == len(levels)
    assert model.transformer.encoder.num_feature_levels == model.transformer.decoder.num_feature_levels == len(levels)
    assert {k: (v.channels, v.stride) for k, v in model.neck.input_shapes.items()} == {
        n: (256, STRIDES[n]) for n in levels
    }
    assert model.device == cfg.train.device == "cuda"

    # training settings; no key outside detrex's train dict (a typo would add one silently)
    train = cfg.train
    assert set(train) <= _stub_train_keys(detrex_stub)
    assert train.init_checkpoint == ""
    assert train.clip_grad.enabled and train.clip_grad.params.max_norm == 0.1
    assert cfg.dataloader.evaluator.output_dir == train.output_dir == f"./output/{name[:-3]}"

    # warm-up: starts at 0.1 % of the lr, full lr after 1000 iterations, x0.1 for the last epoch
    sched = instantiate(cfg.lr_multiplier)
    at = lambda it: sched(it / train.max_iter)  # noqa: E731
    assert at(0) == pytest.approx(0.001)
    assert 0.4 < at(500) < 0.6
    assert at(1000) == at(50000) == 1.0
    assert at(85000) == pytest.approx(0.1)

    # optimizer: layer-wise decay over the ViT, no weight decay on position embedding and tokens
    model.backbone.net.update(TINY, depth=num_layers, weights=None)
    net = torch.nn.Module()
    net.backbone = instantiate(model.backbone)
    net.head = torch.nn.Linear(4, 4)
    cfg.optimizer.params.model = net
    opt = instantiate(cfg.optimizer)
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    params = dict(net.named_parameters())
    lr = cfg.optimizer.lr

    def group(pname):
        return groups[id(params[pname])]

    assert group("head.weight")["lr"] == pytest.approx(lr)
    assert group("backbone.simfp_4.0.weight")["lr"] == pytest.approx(lr)  # the pyramid: full lr
    last = f"backbone.net.vit.blocks.{num_layers - 1}.attn.qkv.weight"
    assert group(last)["lr"] == pytest.approx(lr * decay)
    assert group("backbone.net.vit.blocks.0.attn.qkv.weight")["lr"] == pytest.approx(lr * decay**num_layers)
    assert group("backbone.net.vit.patch_embed.proj.weight")["lr"] == pytest.approx(lr * decay ** (num_layers + 1))
    prefix = ("cls_token", "reg_token") if family == "dinov3" else ("pos_embed", "cls_token")
    for pname in prefix + (("reg_token",) if regs and family == "dinov2" else ()):
        assert group(f"backbone.net.vit.{pname}")["weight_decay"] == 0.0, pname
    assert group(last)["weight_decay"] == cfg.optimizer.weight_decay


def test_5scale_is_4scale_plus_p2(detrex_stub):
    four = LazyConfig.load(str(CONFIGS / "dino_d2reg_vit_base_4scale_12ep.py"))
    five = LazyConfig.load(str(CONFIGS / "dino_d2reg_vit_base_5scale_12ep.py"))
    assert tuple(five.model.backbone.scale_factors) == (4.0,) + tuple(four.model.backbone.scale_factors)
    assert four.model.transformer.num_feature_levels == 4 and five.model.transformer.num_feature_levels == 5


def test_load_detrex_config_explains_missing_checkout(tmp_path, monkeypatch):
    from d2reg.detrex import load_detrex_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETREX_ROOT", raising=False)
    monkeypatch.setitem(sys.modules, "detrex", None)  # as if not installed, even where it is
    with pytest.raises(FileNotFoundError, match="detrex checkout"):
        load_detrex_config("projects/dino/configs/models/dino_r50.py")


# ---------------------------------------------------------------- without / with the real detrex
def _has_detrex() -> bool:
    _forget_detrex()
    return importlib.util.find_spec("detrex") is not None


@pytest.mark.skipif(_has_detrex(), reason="detrex is installed")
@pytest.mark.parametrize("name", sorted(FULL))
def test_full_configs_fail_only_for_lack_of_detrex(name):
    with pytest.raises(ImportError) as err:
        LazyConfig.load(str(CONFIGS / name))
    assert getattr(err.value, "name", "").split(".")[0] == "detrex", err.value


@pytest.mark.parametrize("name", ["dino_d2reg_vit_base_4scale_12ep.py", "dino_d2reg_dinov3_vit_base_4scale_12ep.py"])
def test_full_dino_model_with_real_detrex(monkeypatch, name):
    """Needs a detrex checkout (``pip install -e .`` there, or DETREX_ROOT + PYTHONPATH); skips here."""
    _forget_detrex()
    detrex = pytest.importorskip("detrex")
    assert "detrex_checkout" not in os.fspath(detrex.__file__)
    monkeypatch.setattr(sys, "path", list(sys.path))
    cfg = LazyConfig.load(str(CONFIGS / name))
    cfg.model.backbone.net.update(TINY, weights=None)
    cfg.model.device = "cuda" if torch.cuda.is_available() else "cpu"
    model = instantiate(cfg.model).to(cfg.model.device).eval()
    assert model.neck.in_features == ["p3", "p4", "p5", "p6"]
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8).float()
    with torch.no_grad():
        out = model([{"image": image, "height": 96, "width": 128}])
    assert len(out) == 1 and len(out[0]["instances"]) > 0
