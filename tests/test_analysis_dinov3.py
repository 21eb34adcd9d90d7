"""Diagnostics on DINOv3 checkpoints: the three tools end to end on a tiny random official-layout file,
a DINOv2-reg vs DINOv3 compare run, and the recomputed attention probabilities (RoPE included)
reproducing the block's real attention output."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _tools import load_tool as tool
from dinov3_reference import random_official_dinov3_state_dict
from PIL import Image

from d2reg.analysis import attention_probs, last_block_attention, load_model
from d2reg.testing import random_official_state_dict, write_checkpoint

V3 = dict(embed_dim=64, depth=2, num_heads=2)  # head dim 32: RoPE with 8 frequencies per axis


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis_v3")
    sd3 = random_official_dinov3_state_dict("vit_small", 5, **V3)
    v3 = write_checkpoint(str(root / "dinov3_tiny_pretrain.pth"), sd3)
    v2 = str(root / "dinov2_tiny_reg4.pth")
    torch.save(random_official_state_dict("vit_small", 4, img_size=224, seed=1, embed_dim=64, depth=3, num_heads=1), v2)
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (3 * 16 + 5, 5 * 16), "b": (64, 48)}.items():  # "a": padded to 4 x 5 patches
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(imgs / f"{name}.png")
    return v3, v2, str(imgs)


def test_load_model_builds_the_checkpoint_family(files, capsys):
    v3, v2, _ = files
    m = load_model(v3)
    assert m.family == "dinov3" and type(m.vit).__name__ == "Eva" and len(m.vit.blocks) == 2
    assert m.num_prefix_tokens == 5 == m.vit.num_prefix_tokens and m.num_register_tokens == 4
    assert m.patch_size == 16 and m.grid(53, 80) == (4, 5) and m.info.family == "dinov3"
    assert "DINOv3, 4 storage" in m.short_label
    assert load_model(v2).family == "dinov2"
    with pytest.raises(ValueError, match="dinov3 checkpoint"):
        load_model(v3, family="dinov2")
    with pytest.raises(ValueError, match="patch 16"):
        load_model(v3, patch_size=14)
    rnd = load_model("", family="dinov3", depth=1, embed_dim=64, num_heads=2)
    assert rnd.family == "dinov3" and rnd.num_prefix_tokens == 5 and "about DINOv3" in capsys.readouterr().out


def test_token_norms_on_dinov3(files, tmp_path):
    v3, _, imgs = files
    out = tmp_path / "norms"
    summary = tool("token_norms").main([imgs, "--weights", v3, "--relative", "3", "--output", str(out)])
    assert summary["model"]["family"] == "dinov3" and summary["model"]["registers"] == 4
    assert summary["model"]["patch_size"] == 16 and len(summary["blocks"]) == 2
    assert [(i["rows"], i["cols"]) for i in summary["images"]] == [(4, 5), (4, 3)]
    assert all("register_norm" in b for b in summary["blocks"])
    assert (out / "heatmaps" / "a.png").exists() and (out / "norm_by_block.png").exists()


def test_compare_dinov2_reg_with_dinov3(files, tmp_path):
    v3, v2, imgs = files
    out = tmp_path / "cmp"
    first = tool("token_norms").main([imgs, "--weights", v2, "--compare-weights", v3, "--threshold", "1000",
                                      "--heatmap-blocks", "all", "--output", str(out)])
    other = json.load(open(out / "compare" / "summary.json"))
    assert (first["model"]["family"], first["model"]["patch_size"], first["model"]["registers"]) == ("dinov2", 14, 4)
    assert (other["model"]["family"], other["model"]["patch_size"]) == ("dinov3", 16)
    assert first["images"][0]["rows"] == 4 and first["images"][0]["cols"] == 6  # 53 x 80 at patch 14
    assert len(first["blocks"]) == 3 and len(other["blocks"]) == 2
    with Image.open(out / "heatmaps" / "a.png") as im:  # 3 block rows x 2 models
        im.load()


def test_attention_maps_on_dinov3(files, tmp_path, capsys):
    v3, _, imgs = files
    out = tmp_path / "att"
    results = tool("attention_maps").main([imgs, "--weights", v3, "--max-images", "1", "--output", str(out)])
    (maps,) = results
    assert maps.cls.shape == (2, 4, 5) and maps.registers.shape == (4, 2, 4, 5) and maps.prefix_mass.shape == (5, 2, 5)
    total = np.concatenate([maps.cls[None], maps.registers]).sum((2, 3)) + maps.prefix_mass.sum(-1)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    assert "storage0" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        ["a.png", "a_cls_heads.png"] + [f"a_reg{i}_heads.png" for i in range(4)])


def test_pca_features_on_dinov3(files, tmp_path):
    v3, _, imgs = files
    res = tool("pca_features").main([imgs, "--weights", v3, "--fg-threshold", "0.5", "--output", str(tmp_path / "p")])
    assert [r.shape for r in res.rgb] == [(4, 5, 3), (4, 3, 3)]
    with Image.open(tmp_path / "p" / "a_pca.png") as im:
        assert im.size == (80, 53)


def test_dinov3_attention_probs_reproduce_the_block_output(files):
    """probs @ v through the module's norm + proj equals what the fused EvaAttention returned: only the
    right RoPE (patch tokens rotated, prefix not, full-grid phases) gives the right probabilities."""
    v3, _, _ = files
    model = load_model(v3)
    attn = model.vit.blocks[-1].attn
    seen = {}
    handle = attn.register_forward_hook(lambda m, args, kwargs, out: seen.update(x=args[0], rope=kwargs["rope"],
                                                                                 out=out), with_kwargs=True)
    x = torch.randn(2, 3, 53, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.vit.forward_features(x)
    handle.remove()
    B, N, C = seen["x"].shape
    assert N == 5 + 4 * 5 and seen["rope"] is not None
    with torch.no_grad():
        probs = attention_probs(attn, seen["x"], seen["rope"])
        bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        v = torch.nn.functional.linear(seen["x"], attn.qkv.weight, bias).reshape(B, N, 3, 2, C // 2)[:, :, 2]
        out = attn.proj(attn.norm((probs @ v.transpose(1, 2)).transpose(1, 2).reshape(B, N, C)))
        torch.testing.assert_close(out, seen["out"], atol=1e-5, rtol=1e-4)
        wrong = attn.proj(attn.norm((attention_probs(attn, seen["x"]) @ v.transpose(1, 2)).transpose(1, 2)
                                    .reshape(B, N, C)))  # without RoPE: must differ
        assert (wrong - seen["out"]).abs().max() > 1e-3
        grabbed = last_block_attention(model, x)  # the hook path gets the block's rope itself
    torch.testing.assert_close(grabbed, probs)
    assert not attn._forward_pre_hooks and not attn._forward_hooks
