"""Every checkpoint layout loads into DINOv2Backbone and reproduces a reference implementation's
patch tokens within 1e-4 (fp32): official (vs the independent re-implementation in
official_reference.py), timm (vs timm's own model), Hugging Face (vs transformers' model) and
detectron2 (vs the model that wrote it, through both loaders)."""
from __future__ import annotations

import pytest
import timm
import torch
from official_reference import official_forward, official_patch_tokens
from timm.models.vision_transformer import checkpoint_filter_fn

from d2reg import DINOv2Backbone, load_dinov2_checkpoint
from d2reg.testing import TINY_ARCH, TINY_IMG, hf_saved_state_dict, official_to_hf_model

TOL = 1e-4
HEADS, WIDTH = TINY_ARCH["num_heads"], TINY_ARCH["embed_dim"]
NATIVE = (224, 224)  # the tiny models' stored 16x16 position grid (224 / 14)
# Non-square, non-native sizes: 182x266 (13x19 patches: the 448x644 / 32x46 case scaled to a
# 16-grid) and 224x322 (16x23: one side native, the other upsampled).
NON_NATIVE = [(182, 266), (224, 322)]


def _img(h, w, batch=2, seed=0):
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _backbone(path, arch="vit_small", regs=4, patch_size=14, **kw):
    return DINOv2Backbone(arch=arch, num_register_tokens=regs, patch_size=patch_size, weights=path,
                          **TINY_ARCH, pretrain_img_size=TINY_IMG, **kw).eval()


def _assert_close(out, ref, tol=TOL):
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err <= tol, f"max abs diff {err:.3g} > {tol}"


# ----------------------------------------------------------------------------------- official
@pytest.mark.parametrize(
    "arch,regs",
    [("vit_small", 4), ("vit_small", 0), ("vit_giant2", 4)],
    ids=["reg4", "register_free", "swiglu_reg4"],
)
def test_official_layout_matches_official_forward(write_ckpt, arch, regs):
    path, sd = write_ckpt("official.pth", arch=arch, num_register_tokens=regs)
    model = _backbone(path, arch, regs)
    assert model.checkpoint_info.format == "official"
    with torch.no_grad():
        for h, w in [NATIVE] + NON_NATIVE:
            img = _img(h, w)
            _assert_close(model(img)["last_feat"], official_patch_tokens(sd, img, num_heads=HEADS))


@pytest.mark.parametrize("regs", [4, 0], ids=["reg4", "register_free"])
def test_official_layout_at_real_sizes(write_ckpt, regs):
    """The issue's sizes: a 37x37 position grid (518 px), run at 518x518 and at 448x644 (32x46)."""
    path, sd = write_ckpt("official518.pth", num_register_tokens=regs, img_size=518)
    model = DINOv2Backbone(num_register_tokens=regs, patch_size=14, weights=path, **TINY_ARCH,
                           pretrain_img_size=518).eval()
    assert model.checkpoint_info.pos_grid == 37
    with torch.no_grad():
        for h, w in [(518, 518), (448, 644)]:
            img = _img(h, w, batch=1)
            _assert_close(model(img)["last_feat"], official_patch_tokens(sd, img, num_heads=HEADS))


@pytest.mark.parametrize("arch,regs", [("vit_small", 4), ("vit_giant2", 0)], ids=["reg4", "swiglu_register_free"])
def test_official_layout_final_norm(write_ckpt, arch, regs):
    path, sd = write_ckpt("official.pth", arch=arch, num_register_tokens=regs)
    model = _backbone(path, arch, regs, final_norm=True)
    img = _img(*NON_NATIVE[0])
    with torch.no_grad():
        out = model(img)["last_feat"]
        _assert_close(out, official_patch_tokens(sd, img, num_heads=HEADS, norm=True))
        # and the norm makes a difference, so the check above is not vacuous
        assert (out - official_patch_tokens(sd, img, num_heads=HEADS, norm=False)).abs().max() > 0.1


def test_reference_distinguishes_interpolation_paths(write_ckpt):
    """Sanity of the comparison itself: at a non-native size the two official interpolation
    variants give clearly different tokens, so a 1e-4 match pins down which one d2reg uses."""
    path, sd = write_ckpt("official.pth", num_register_tokens=0)
    model = _backbone(path, regs=0)
    img = _img(*NON_NATIVE[0], batch=1)
    with torch.no_grad():
        out = model(img)["last_feat"]
        sd_with_regs = dict(sd, register_tokens=torch.zeros(1, 0, WIDTH))  # selects the reg models' path
        wrong = official_forward(sd_with_regs, img, num_heads=HEADS)[:, 1:].transpose(1, 2).reshape(out.shape)
    assert (out - wrong).abs().max() > 1e-2


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "teacher", "module"])
def test_wrapped_official_checkpoints(write_ckpt, tmp_path, wrapper):
    path, sd = write_ckpt("official.pth")
    if wrapper == "teacher":  # DINOv2 training checkpoint: {"teacher": {"backbone.*", "dino_head.*"}}
        obj = {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, "dino_head.w": torch.zeros(2)},
               "iteration": 3}
    elif wrapper == "module":  # DistributedDataParallel prefix
        obj = {f"module.{k}": v for k, v in sd.items()}
    else:
        obj = {wrapper: sd, "epoch": 7}
    wrapped = str(tmp_path / f"{wrapper}.pth")
    torch.save(obj, wrapped)
    img = _img(*NON_NATIVE[0], batch=1)
    with torch.no_grad():
        _assert_close(_backbone(wrapped)(img)["last_feat"], official_patch_tokens(sd, img, num_heads=HEADS))


# ----------------------------------------------------------------------------------------- timm
TIMM_MODELS = [
    # (timm model name, d2reg arch, registers, size): timm reproduces the official reg models at any
    # size; for register-free models it interpolates differently at non-native sizes (antialiased,
    # by size), so those are compared at the native size only.
    ("vit_small_patch14_reg4_dinov2", "vit_small", 4, NON_NATIVE[0]),
    ("vit_small_patch14_dinov2", "vit_small", 0, NATIVE),
    ("vit_giant_patch14_reg4_dinov2", "vit_giant2", 4, NON_NATIVE[1]),
]


@pytest.mark.parametrize("name,arch,regs,size", TIMM_MODELS, ids=["reg4", "register_free", "swiglu_reg4"])
def test_timm_layout_matches_timm(write_ckpt, tmp_path, name, arch, regs, size):
    _, sd = write_ckpt("unused.pth", arch=arch, num_register_tokens=regs)
    extra = {}
    if arch == "vit_giant2":  # timm's giant mlp_ratio rounds differently from the official width at dim 32
        extra["mlp_ratio"] = (sd["blocks.0.mlp.w12.weight"].shape[0] + 0.5) / WIDTH
    ref = timm.create_model(name, pretrained=False, img_size=TINY_IMG, dynamic_img_size=True, num_classes=0,
                            **TINY_ARCH, **extra).eval()
    ref.load_state_dict(checkpoint_filter_fn(dict(sd), ref))  # timm's own official->timm conversion
    path = str(tmp_path / "timm.pth")
    torch.save(ref.state_dict(), path)
    model = _backbone(path, arch, regs)
    assert model.checkpoint_info.format == "timm"
    img = _img(*size)
    with torch.no_grad():
        expected = ref.forward_intermediates(img, indices=[1], norm=False, output_fmt="NCHW", intermediates_only=True)
        _assert_close(model(img)["last_feat"], expected[0])
        # timm's forward_features applies the final norm: compare final_norm=True with it
        tokens = ref.forward_features(img)[:, ref.num_prefix_tokens:]
        normed = _backbone(path, arch, regs, final_norm=True)(img)["last_feat"]
        _assert_close(normed, tokens.transpose(1, 2).reshape(normed.shape))


# ------------------------------------------------------------------------------- Hugging Face
def _hf_patch_tokens(hf, img, regs):
    out = hf(pixel_values=img, output_hidden_states=True)
    tokens = out.hidden_states[-1][:, 1 + regs:]  # hidden_states[-1]: the last block, before layernorm
    B, _, H, W = img.shape
    return tokens.transpose(1, 2).reshape(B, -1, H // 14, W // 14)


@pytest.mark.parametrize(
    "arch,regs,size,suffix",
    [
        ("vit_small", 4, NON_NATIVE[0], ".pth"),
        # transformers' register-free Dinov2Model interpolates position embeddings by size, not by the
        # official 0.1-offset scale factor, so it only agrees with the official model at the native size.
        ("vit_small", 0, NATIVE, ".bin"),
        ("vit_giant2", 4, NON_NATIVE[1], ".safetensors"),
    ],
    ids=["reg4", "register_free", "swiglu_reg4_safetensors"],
)
def test_hf_layout_matches_transformers(write_ckpt, arch, regs, size, suffix):
    path, sd = write_ckpt("hf" + suffix, layout="hf", arch=arch, num_register_tokens=regs)
    hf = official_to_hf_model(sd, num_heads=HEADS, img_size=TINY_IMG)
    model = _backbone(path, arch, regs)
    assert model.checkpoint_info.format == "hf"
    img = _img(*size)
    with torch.no_grad():
        _assert_close(model(img)["last_feat"], _hf_patch_tokens(hf, img, regs))


@pytest.mark.parametrize("arch", ["vit_small", "vit_giant2"])
def test_hf_in_memory_names(write_ckpt, tmp_path, arch):
    """``torch.save(model.state_dict())`` of a transformers>=5 model uses other names than the files
    (attention.q_proj, mlp.gate_proj/up_proj/down_proj); both must load."""
    _, sd = write_ckpt("unused.pth", arch=arch)
    hf = official_to_hf_model(sd, num_heads=HEADS, img_size=TINY_IMG)
    path = str(tmp_path / "hf_state_dict.pth")
    torch.save(hf.state_dict(), path)
    img = _img(*NON_NATIVE[0])
    with torch.no_grad():
        _assert_close(_backbone(path, arch)(img)["last_feat"], _hf_patch_tokens(hf, img, 4))


@pytest.mark.parametrize("regs", [4, 0])
def test_hf_prefixed_classifier_checkpoint(write_ckpt, tmp_path, regs):
    """A Dinov2(WithRegisters)ForImageClassification file: backbone keys under a model prefix
    ("dinov2_with_registers." / "dinov2.") next to classifier.*, which is ignored."""
    import transformers

    _, sd = write_ckpt("unused.pth", num_register_tokens=regs)
    hf = official_to_hf_model(sd, num_heads=HEADS, img_size=TINY_IMG)
    cls = (transformers.Dinov2WithRegistersForImageClassification if regs
           else transformers.Dinov2ForImageClassification)
    clf = cls(hf.config.__class__(**{**hf.config.to_dict(), "num_labels": 3}))
    getattr(clf, clf.base_model_prefix).load_state_dict(hf.state_dict())
    tensors = hf_saved_state_dict(clf)
    assert any(k.startswith(clf.base_model_prefix + ".embeddings.") for k in tensors)
    assert "classifier.weight" in tensors
    path = str(tmp_path / "clf.safetensors")
    from safetensors.torch import save_file

    save_file(tensors, path)
    img = _img(*NATIVE)
    with torch.no_grad():
        _assert_close(_backbone(path, regs=regs)(img)["last_feat"], _hf_patch_tokens(hf, img, regs))


def test_write_random_checkpoint_hf(tmp_path):
    """The library helper writes the file layout of transformers' save_pretrained."""
    from d2reg.testing import write_random_checkpoint

    path = str(tmp_path / "rand.safetensors")
    sd = write_random_checkpoint(path, "hf", num_register_tokens=4, **TINY_ARCH)
    from safetensors.torch import load_file

    keys = set(load_file(path))
    assert "encoder.layer.0.attention.attention.query.weight" in keys
    state, info = load_dinov2_checkpoint(path)
    assert (info.format, info.embed_dim, info.depth, info.num_register_tokens, info.pos_grid) == (
        "hf", WIDTH, TINY_ARCH["depth"], 4, 37)
    torch.testing.assert_close(state["blocks.1.attn.qkv.weight"], sd["blocks.1.attn.qkv.weight"], rtol=0, atol=0)


# ----------------------------------------------------------------------------------- detectron2
def test_detectron2_layout_both_loaders(write_ckpt, tiny_maskrcnn_cfg, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    official, _ = write_ckpt("official.pth")
    torch.manual_seed(0)
    model = build_model(tiny_maskrcnn_cfg(WEIGHTS=official)).eval()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    path = str(tmp_path / "model_final.pth")

    # 1. d2reg's loader reads the backbone out of the detectron2 file
    state, info = load_dinov2_checkpoint(path)
    vit_state = model.backbone.net.vit.state_dict()
    assert info.format == "detectron2" and info.patch_size == 16
    assert set(state) == set(vit_state)
    for k, v in vit_state.items():
        assert torch.equal(state[k], v), k
    img = _img(128, 160, batch=1)
    with torch.no_grad():
        expected = model.backbone(img)
        again = DINOv2Backbone(weights=path, **TINY_ARCH, pretrain_img_size=TINY_IMG).eval()
        assert torch.equal(again(img)["last_feat"], model.backbone.net(img)["last_feat"])

    # 2. detectron2's own checkpointer (MODEL.WEIGHTS) into a fresh, differently initialised model
    torch.manual_seed(1)
    fresh = build_model(tiny_maskrcnn_cfg()).eval()
    with torch.no_grad():
        assert not torch.equal(fresh.backbone(img)["p2"], expected["p2"])
        DetectionCheckpointer(fresh).load(path)
        got = fresh.backbone(img)
    assert list(got) == ["p2", "p3", "p4", "p5", "p6"]
    for name in got:
        assert torch.equal(got[name], expected[name]), name
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


# ------------------------------------------------------------------------------ CheckpointInfo
@pytest.mark.parametrize(
    "layout,arch,regs,swiglu",
    [("official", "vit_small", 4, False), ("official", "vit_giant2", 0, True), ("timm", "vit_small", 4, False),
     ("timm", "vit_giant2", 4, True), ("timm", "vit_small", 0, False), ("hf", "vit_giant2", 4, True),
     ("hf", "vit_small", 0, False)],
)
def test_checkpoint_info(write_ckpt, layout, arch, regs, swiglu):
    path, _ = write_ckpt(f"{layout}.pth", layout=layout, arch=arch, num_register_tokens=regs)
    state, info = load_dinov2_checkpoint(path)
    assert info.format == layout
    assert (info.embed_dim, info.depth, info.patch_size, info.num_register_tokens, info.swiglu, info.pos_grid) == (
        WIDTH, TINY_ARCH["depth"], 14, regs, swiglu, 16)
    assert info.arch is None  # 32 is no standard DINOv2 width
    assert info.has_final_norm and info.path == path
    assert "reg_token" in state if regs else "reg_token" not in state
    assert "mask_token" not in state


def test_checkpoint_info_standard_width(tmp_path):
    from d2reg.testing import random_official_state_dict

    sd = random_official_state_dict("vit_small", 4, img_size=56, depth=1)  # ViT-S width, 1 block, 4x4 grid
    path = str(tmp_path / "s.pth")
    torch.save(sd, path)
    _, info = load_dinov2_checkpoint(path)
    assert (info.arch, info.embed_dim, info.depth, info.pos_grid) == ("vit_small", 384, 1, 4)
