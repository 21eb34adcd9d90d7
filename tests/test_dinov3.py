"""DINOv3: d2reg's ViT (timm Eva) and checkpoint format module against an independent reference of the
official forward (tests/dinov3_reference.py), timm's own model and transformers' DINOv3ViTModel."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dinov3_reference import (
    get_intermediate_layers,
    official_to_hf,
    random_official_dinov3_state_dict,
    window_attention_mask,
)

from d2reg.checkpoint import dinov3 as fmt
from d2reg.checkpoint.errors import CheckpointError
from d2reg.vit.dinov3 import (
    DINOV3_ARCHS,
    DINOv3WindowedAttention,
    create_dinov3_vit,
    enable_dinov3_window_attention,
    materialize_dinov3_vit,
)

TOL = 1e-4  # relative to the feature scale


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared CPU: one intra-op thread is ~2x faster than spin-waiting on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
TINY = {"mlp": ("vit_small", dict(embed_dim=128, depth=2)),  # head dim 64, 16 RoPE periods as the real models
        "swiglu": ("vit_small_plus", dict(embed_dim=128, depth=2))}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _load(sd, layout=None):
    """file state dict -> (d2reg vit loaded through to_timm + infer_info + fit_to_model, timm sd, info)."""
    layout = layout or fmt.detect_layout(sd)
    timm_sd = fmt.to_timm(sd, layout)
    info = fmt.infer_info(timm_sd)
    vit = create_dinov3_vit(info["arch"] or "vit_small", embed_dim=info["embed_dim"], depth=info["depth"],
                            num_heads=info["num_heads"], swiglu=info["mlp"] == "swiglu",
                            mlp_hidden=info["mlp_hidden"], qkv_bias=info["qkv_bias"],
                            num_register_tokens=info["num_register_tokens"], device="meta")
    vit = materialize_dinov3_vit(vit).eval()  # no random init (slow on CPU); every tensor is loaded next
    vit.load_state_dict(fmt.fit_to_model(timm_sd, info, vit), strict=True)
    return vit, timm_sd, info


def _feats(vit, x, indices):
    with torch.no_grad():
        return vit.forward_intermediates(x, indices=indices, norm=False, output_fmt="NCHW", intermediates_only=True)


@pytest.fixture(scope="module", params=sorted(TINY))
def official(request):
    arch, kw = TINY[request.param]
    return request.param, random_official_dinov3_state_dict(arch, seed=1, **kw)


@pytest.mark.parametrize("hw", [(512, 512), (448, 640), (200, 333)])
def test_matches_official_reference(official, hw):
    kind, sd = official
    if hw == (200, 333) and kind == "swiglu":
        pytest.skip("padding is MLP-independent: the odd size runs once (MLP model)")
    assert fmt.detect_layout(sd) == "official"
    vit, _, info = _load(sd)
    assert info["mlp"] == kind and info["num_heads"] == 2 and info["num_register_tokens"] == 4
    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    ours = _feats(vit, x, [0, 1])
    h, w = -(-hw[0] // 16), -(-hw[1] // 16)
    assert [tuple(o.shape) for o in ours] == [(1, 128, h, w)] * 2  # 1 + 4 prefix tokens dropped, ceil
    ref = get_intermediate_layers(sd, F.pad(x, (0, w * 16 - hw[1], 0, h * 16 - hw[0])), n=[0, 1], norm=False)
    for o, r in zip(ours, ref):
        assert _rel(o, r) <= TOL
    if hw != (200, 333):
        return
    with torch.no_grad():  # final norm (backbone final_norm=True) as the official norm=True
        normed = vit.forward_intermediates(x, indices=[1], norm=True, output_fmt="NCHW", intermediates_only=True)
    ref_n = get_intermediate_layers(sd, F.pad(x, (0, w * 16 - hw[1], 0, h * 16 - hw[0])), n=[1], norm=True)
    assert _rel(normed[0], ref_n[0]) <= TOL


def test_k_bias_inert_and_bias_mask_respected():
    sd = random_official_dinov3_state_dict("vit_small", 2, embed_dim=128, depth=1, k_bias_scale=5.0)
    t1 = fmt.to_timm(sd, "official")
    other = dict(sd)
    other["blocks.0.attn.qkv.bias"] = sd["blocks.0.attn.qkv.bias"].clone()
    other["blocks.0.attn.qkv.bias"][128:256] = 100.0  # any masked K bias: same model
    t2 = fmt.to_timm(other, "official")
    assert all(torch.equal(t1[k], t2[k]) for k in t1)
    assert "blocks.0.attn.k_bias" not in t1 and "blocks.0.attn.qkv.bias" not in t1
    masked = dict(sd)  # a mask that zeroes part of q: applied, not ignored
    masked["blocks.0.attn.qkv.bias_mask"] = sd["blocks.0.attn.qkv.bias_mask"].clone()
    masked["blocks.0.attn.qkv.bias_mask"][:64] = 0
    assert torch.equal(fmt.to_timm(masked, "official")["blocks.0.attn.q_bias"][:64], torch.zeros(64))
    active = dict(sd)
    active["blocks.0.attn.qkv.bias_mask"] = torch.ones(384)
    with pytest.raises(CheckpointError, match="K bias"):
        fmt.to_timm(active, "official")


def test_stored_periods_bf16_and_no_qkv_bias():
    """The released files store bf16-rounded periods, the official model uses them: so does d2reg
    (a persistent rope.periods). A 7B-like model: SwiGLU aligned to 64, no qkv bias, no cls_norm kept."""
    sd = random_official_dinov3_state_dict("vit_7b", 3, embed_dim=128, depth=2, periods_dtype=torch.bfloat16,
                                           untie_cls_norm=True, untie_local_cls_norm=True)
    vit, timm_sd, info = _load(sd)
    assert info["qkv_bias"] is False and info["mlp"] == "swiglu" and info["mlp_hidden"] == 256
    assert not any("cls_norm" in k for k in timm_sd)
    assert torch.equal(vit.rope.periods, sd["rope_embed.periods"].float())
    x = torch.randn(2, 3, 224, 288, generator=torch.Generator().manual_seed(1))
    ref = get_intermediate_layers(sd, x, n=[1])
    assert _rel(_feats(vit, x, [1])[0], ref[0]) <= TOL
    vit.half().float()  # a dtype round trip keeps the loaded periods (timm would recompute them)
    assert torch.equal(vit.rope.periods, sd["rope_embed.periods"].float())


@pytest.mark.parametrize("kind,timm_name", [("mlp", "vit_small_patch16_dinov3_qkvb"),
                                            ("swiglu", "vit_small_plus_patch16_dinov3_qkvb")])
def test_timm_model_and_timm_layout(kind, timm_name):
    import timm
    from timm.models.eva import checkpoint_filter_fn

    arch, kw = TINY[kind]
    sd = random_official_dinov3_state_dict(arch, seed=4, **kw)
    ref_model = timm.create_model(timm_name, pretrained=False, num_classes=0, embed_dim=128, depth=2,
                                  num_heads=2).eval()
    ref_model.load_state_dict(checkpoint_filter_fn(sd, ref_model))
    x = torch.randn(1, 3, 224, 320, generator=torch.Generator().manual_seed(2))
    theirs = _feats(ref_model, x, [0, 1])
    ours = _feats(_load(sd)[0], x, [0, 1])
    timm_file = ref_model.state_dict()  # timm's own layout (no periods, no K bias)
    assert fmt.detect_layout(timm_file) == "timm"
    from_timm = _feats(_load(timm_file)[0], x, [0, 1])
    for a, b, c in zip(ours, theirs, from_timm):
        assert _rel(a, b) <= TOL and _rel(c, b) <= TOL
    # d2reg's own saves (with rope.periods) are the timm layout too and round-trip exactly
    own = _load(sd)[0].state_dict()
    assert fmt.detect_layout(own) == "timm"
    again = fmt.to_timm(own, "timm")
    assert set(again) == set(own) and all(torch.equal(again[k], own[k]) for k in own)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_hf_model_from_its_own_files(kind, tmp_path):
    from safetensors.torch import load_file
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    arch, kw = TINY[kind]
    sd = random_official_dinov3_state_dict(arch, seed=5, **kw)
    hf_sd = official_to_hf(sd)
    hidden = hf_sd["model.layer.0.mlp.up_proj.weight"].shape[0]
    cfg = DINOv3ViTConfig(hidden_size=128, intermediate_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                          num_register_tokens=4, use_gated_mlp=kind == "swiglu", hidden_act="silu" if kind == "swiglu"
                          else "gelu", layer_norm_eps=1e-5, rope_theta=100.0, key_bias=False)
    hf = DINOv3ViTModel(cfg).eval()
    hf.load_state_dict(hf_sd, strict=True)
    hf.save_pretrained(tmp_path)
    file_sd = load_file(str(tmp_path / "model.safetensors"))
    assert fmt.detect_layout(file_sd) == "hf"
    vit, timm_sd, info = _load(file_sd)
    hw = (512, 512) if kind == "mlp" else (448, 640)
    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = hf(pixel_values=x, output_hidden_states=True)
    h, w = hw[0] // 16, hw[1] // 16
    theirs = out.hidden_states[-1][:, 5:].reshape(1, h, w, -1).permute(0, 3, 1, 2)  # pre-norm last layer
    assert _rel(_feats(vit, x, [1])[0], theirs) <= TOL
    # round trips: timm -> HF layout (save_pretrained names) -> timm
    back = fmt.timm_to_hf(timm_sd)  # mask_token (pre-training only, dropped) comes back as HF's zero init
    assert set(back) == set(file_sd)
    assert all(torch.equal(back[k], file_sd[k]) for k in file_sd if k != "embeddings.mask_token")
    again = fmt.to_timm(back, "hf")
    assert set(again) == set(timm_sd) and all(torch.equal(again[k], timm_sd[k]) for k in timm_sd)
    assert fmt.detect_layout(hf.state_dict()) == "hf"  # in-memory names (model.layer.N) too
    mem = fmt.to_timm(hf.state_dict(), "hf")
    assert all(torch.equal(mem[k], timm_sd[k]) for k in timm_sd)


def _windowed_copy(vit, window_size, blocks):
    import copy
    win = enable_dinov3_window_attention(copy.deepcopy(vit), window_size, blocks)
    assert all(isinstance(win.blocks[i].attn, DINOv3WindowedAttention) for i in blocks)
    assert list(win.state_dict()) == list(vit.state_dict())
    return win


@pytest.mark.parametrize("hw,ws,batch", [((200, 333), 4, 2), ((128, 192), 4, 1), ((160, 160), 3, 1)])
def test_window_attention_equals_masked_reference(hw, ws, batch):
    sd = random_official_dinov3_state_dict("vit_small", 6, embed_dim=128, depth=2)
    vit = _load(sd)[0]
    win = _windowed_copy(vit, ws, [0])
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(4))
    h, w = -(-hw[0] // 16), -(-hw[1] // 16)
    ours = _feats(win, x, [0, 1])
    xp = F.pad(x, (0, w * 16 - hw[1], 0, h * 16 - hw[0]))
    ref = get_intermediate_layers(sd, xp, n=[0, 1], attn_masks={0: window_attention_mask(h, w, ws, 5)})
    for o, r in zip(ours, ref):
        assert _rel(o, r) <= TOL
    assert _rel(ours[0], _feats(vit, x, [0])[0]) > 1e-3  # the windows really change block 0


def test_one_window_is_global_attention():
    vit = _load(random_official_dinov3_state_dict("vit_small_plus", 7, embed_dim=128, depth=2))[0]
    win = _windowed_copy(vit, 20, [0, -1])
    x = torch.randn(1, 3, 224, 320, generator=torch.Generator().manual_seed(5))  # 14 x 20 grid, one window
    for a, b in zip(_feats(win, x, [0, 1]), _feats(vit, x, [0, 1])):
        assert _rel(a, b) <= 1e-5
    win.train()  # gradients flow through the windowed blocks, with activation checkpointing too
    win.set_grad_checkpointing(True)
    feats = win.forward_intermediates(x[:, :, :64, :96], indices=[1], intermediates_only=True)[0]
    feats.sum().backward()
    assert win.blocks[0].attn.q_bias.grad is not None and win.blocks[0].attn.qkv.weight.grad is not None


def test_rope_augmentations_off_by_default():
    sd = random_official_dinov3_state_dict("vit_small", 10, embed_dim=128, depth=1)
    vit = _load(sd)[0]
    x = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(6))
    evaluated = _feats(vit, x, [0])[0]
    assert torch.equal(_feats(vit.train(), x, [0])[0], evaluated)  # training mode: the same RoPE
    aug = create_dinov3_vit("vit_small", embed_dim=128, depth=1, rope_rescale=2.0)  # the hub's pre-training aug
    aug.load_state_dict(vit.state_dict())
    assert torch.equal(_feats(aug.eval(), x, [0])[0], evaluated)
    torch.manual_seed(0)
    assert _rel(_feats(aug.train(), x, [0])[0], evaluated) > 1e-4


def test_pruned_model_and_errors():
    sd = random_official_dinov3_state_dict("vit_small", 8, embed_dim=128, depth=3)
    timm_sd = fmt.to_timm(sd, "official")
    info = fmt.infer_info(timm_sd)
    assert info["depth"] == 3 and info["has_final_norm"]
    vit = create_dinov3_vit("vit_small", embed_dim=128, depth=3).eval()  # the ordinary (random-init) path
    vit.prune_intermediate_layers([0], prune_norm=True, prune_head=True)
    fitted = fmt.fit_to_model(timm_sd, info, vit)
    assert list(fitted) == list(vit.state_dict()) and not any(k.startswith(("blocks.1.", "norm.")) for k in fitted)
    vit.load_state_dict(fitted, strict=True)
    x = torch.randn(1, 3, 96, 128)
    assert _rel(_feats(vit, x, [0])[0], get_intermediate_layers(sd, x, n=[0])[0]) <= TOL

    wider = create_dinov3_vit("vit_small", embed_dim=192, depth=2, device="meta")
    with pytest.raises(CheckpointError, match="embed_dim: checkpoint 128 vs model 192"):
        fmt.fit_to_model(timm_sd, info, wider)
    swiglu = create_dinov3_vit("vit_small_plus", embed_dim=128, depth=2, device="meta")
    with pytest.raises(CheckpointError, match="mlp: checkpoint mlp vs model swiglu"):
        fmt.fit_to_model(timm_sd, info, swiglu)
    deeper = create_dinov3_vit("vit_small", embed_dim=128, depth=4, device="meta")
    with pytest.raises(CheckpointError, match="depth"):
        fmt.fit_to_model(timm_sd, info, deeper)
    no_norm = {k: v for k, v in timm_sd.items() if not k.startswith("norm.")}
    with pytest.raises(CheckpointError, match="final norm"):
        fmt.fit_to_model(no_norm, fmt.infer_info(no_norm), create_dinov3_vit("vit_small", embed_dim=128, depth=1))
    from types import SimpleNamespace  # the pipeline's CheckpointInfo: attributes, swiglu for mlp
    as_object = SimpleNamespace(**{k: v for k, v in info.items() if k != "mlp"}, swiglu=False)
    assert list(fmt.fit_to_model(timm_sd, as_object, vit)) == list(fitted)


def test_dinov2_files_are_not_dinov3():
    import timm
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    v2_timm = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, embed_dim=64,
                                depth=1, num_heads=1, img_size=56).state_dict()
    v2_official = {"cls_token": torch.zeros(1, 1, 64), "register_tokens": torch.zeros(1, 4, 64),
                   "pos_embed": torch.zeros(1, 17, 64), "mask_token": torch.zeros(1, 64),
                   "patch_embed.proj.weight": torch.zeros(64, 3, 14, 14), "blocks.0.ls1.gamma": torch.ones(64),
                   "blocks.0.attn.qkv.weight": torch.zeros(192, 64)}
    cfg = Dinov2WithRegistersConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=128,
                                    image_size=56, num_register_tokens=4)
    v2_hf = Dinov2WithRegistersModel(cfg).state_dict()
    for sd in (v2_timm, v2_official, v2_hf):
        assert fmt.detect_layout(sd) is None
        with pytest.raises(CheckpointError, match="DINOv2"):
            fmt.to_timm(sd, None)
    with pytest.raises(CheckpointError, match="DINOv2"):
        fmt.infer_info(v2_timm)
    with pytest.raises(CheckpointError, match="DINOv2"):
        fmt.fit_to_model(v2_timm, {}, create_dinov3_vit("vit_small", embed_dim=64, depth=1, device="meta"))


def test_dinov2_detection_does_not_claim_dinov3(tmp_path):
    from d2reg.checkpoint import dinov2

    sd = random_official_dinov3_state_dict("vit_small", 9, embed_dim=64, depth=1)
    vit = _load(sd)[0]
    for layout_sd in (sd, fmt.to_timm(sd, "official"), vit.state_dict(), fmt.timm_to_hf(vit.state_dict())):
        assert fmt.detect_layout(layout_sd) is not None
        assert dinov2.detect_layout(layout_sd) is None


def test_arch_table_matches_timm_and_infer_info():
    import timm

    for name, spec in DINOV3_ARCHS.items():  # 2 blocks of each: the widths, heads and MLPs are the point
        ours = create_dinov3_vit(name, depth=2, device="meta")
        theirs = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, depth=2,
                                   device="meta").state_dict()
        sd = ours.state_dict()
        assert set(sd) - set(theirs) == {"rope.periods"} and set(theirs) <= set(sd)
        assert all(sd[k].shape == theirs[k].shape for k in theirs)
        info = fmt.infer_info(sd)
        assert (info["arch"], info["depth"], info["num_heads"], info["qkv_bias"]) == \
            (name, 2, spec.num_heads, spec.qkv_bias)
        info_timm = fmt.infer_info(theirs)  # no periods stored: heads from the table
        assert (info_timm["arch"], info_timm["num_heads"]) == (name, spec.num_heads)


def test_files_shapes_only_and_pipeline_interface(tmp_path):
    """Files read by d2reg's reader (full and shapes-only meta tensors) through detect -> to_timm ->
    checkpoint_info -> create_model (on meta) -> prune -> fit_to_model, the pipeline's sequence."""
    from safetensors.torch import save_file

    from d2reg.checkpoint.io import read_state_dict

    sd = random_official_dinov3_state_dict("vit_small_plus", 11, embed_dim=128, depth=2)
    torch.save({"teacher": {"backbone." + k: v for k, v in sd.items()}}, tmp_path / "official.pth")
    vit = _load(sd)[0]
    save_file(vit.state_dict(), str(tmp_path / "timm.safetensors"))
    for name, layout in (("official.pth", "official"), ("timm.safetensors", "timm")):
        for shapes_only in (True, False):
            raw = read_state_dict(str(tmp_path / name), shapes_only=shapes_only)
            assert fmt.detect_layout(raw) == layout
            timm_sd = fmt.to_timm(raw, layout)
            info = fmt.checkpoint_info(timm_sd, layout, name)
            assert (info.family, info.swiglu, info.num_heads, info.mlp_hidden) == ("dinov3", True, 2, 512)
            with torch.device("meta"):
                model = fmt.create_model(info, patch_size=16)
                model.prune_intermediate_layers([0, 1], prune_norm=True, prune_head=True)
            fitted = fmt.fit_to_model(timm_sd, info, model, patch_resize="pi")
            assert list(fitted) == list(model.state_dict())
            if not shapes_only:
                ref = vit.state_dict()
                assert all(torch.equal(fitted[k], ref[k]) for k in fitted)
    with pytest.raises(CheckpointError, match="patch size"):
        fmt.create_model(info, patch_size=14)
