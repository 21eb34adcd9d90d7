"""Windowed attention (d2reg.modeling.window): exactness against a masked global attention, padding,
prefix tokens, weights loading unchanged, gradients and the config path."""
from __future__ import annotations

import copy

import pytest
import torch

from d2reg import DINOv2Backbone
from d2reg.modeling.window import WindowedAttention, default_window_block_indexes, enable_window_attention


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if "norm" in name and "weight" in name else 0.0))


def _window_mask(h: int, w: int, ws: int, num_prefix: int) -> torch.Tensor:
    """(P + h*w)^2 bool mask of what each token may attend to under d2reg's windowed attention:
    patches see their own window and the prefix; prefix tokens see everything."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    win = ((rows // ws) * 1000 + cols // ws).flatten()
    n = num_prefix + h * w
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[num_prefix:, num_prefix:] = win[:, None] == win[None, :]
    return mask


@pytest.mark.parametrize("hw,ws", [((6, 9), 4), ((8, 8), 4), ((5, 7), 3), ((3, 3), 7)])
def test_windowed_attention_equals_block_masked_global(tiny_kwargs, hw, ws):
    """Padding (6x9 by 4: padded; 8x8 by 4: exact; 3x3 by 7: one window smaller than the grid)."""
    net = DINOv2Backbone(**tiny_kwargs).eval()
    _randomize(net)
    vit = net.vit
    attn = vit.blocks[0].attn
    P = vit.num_prefix_tokens
    h, w = hw
    x = torch.randn(2, P + h * w, 32)
    ref = attn(x, attn_mask=_window_mask(h, w, ws, P))
    wattn = WindowedAttention(copy.deepcopy(attn), ws, P)
    wattn._grid.hw = (h, w)
    out = wattn(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_one_window_covering_the_grid_is_global_attention(tiny_kwargs):
    """Window >= grid: the windowed model reproduces the global one (padding masked out)."""
    glob = DINOv2Backbone(**tiny_kwargs).eval()
    _randomize(glob)
    win = DINOv2Backbone(window_size=16, window_block_indexes=[0, 1], **tiny_kwargs).eval()
    win.load_state_dict(glob.state_dict())
    x = torch.randn(2, 3, 160, 208)  # 10 x 13 grid at patch 16
    with torch.no_grad():
        torch.testing.assert_close(win(x)["last_feat"], glob(x)["last_feat"], rtol=1e-5, atol=1e-5)


def test_window_model_loads_official_weights_and_keeps_keys(tiny_kwargs, write_ckpt):
    path, _ = write_ckpt("w.pth")
    plain = DINOv2Backbone(weights=path, **tiny_kwargs)
    win = DINOv2Backbone(weights=path, window_size=4, window_block_indexes=[0], **tiny_kwargs)
    assert list(plain.state_dict()) == list(win.state_dict())
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(win.state_dict()[k], v)
    assert isinstance(win.vit.blocks[0].attn, WindowedAttention)
    assert not isinstance(win.vit.blocks[1].attn, WindowedAttention)  # global block untouched
    x = torch.randn(1, 3, 112, 144)  # 7 x 9 grid: padded to 8 x 12
    with torch.no_grad():
        out = win(x)["last_feat"]
        ref = plain(x)["last_feat"]
    assert out.shape == ref.shape == (1, 32, 7, 9)
    assert torch.isfinite(out).all() and not torch.allclose(out, ref)


@pytest.mark.parametrize("regs", [0, 4])
def test_prefix_tokens_get_exact_global_update(tiny_kwargs, regs):
    """CLS (+ registers) are updated exactly as by the global block, whatever the windows."""
    net = DINOv2Backbone(num_register_tokens=regs, **tiny_kwargs).eval()
    _randomize(net)
    vit = net.vit
    P = vit.num_prefix_tokens
    attn = vit.blocks[0].attn
    x = torch.randn(1, P + 6 * 10, 32)
    ref = attn(x)
    wattn = WindowedAttention(copy.deepcopy(attn), 3, P)
    wattn._grid.hw = (6, 10)
    out = wattn(x)
    torch.testing.assert_close(out[:, :P], ref[:, :P], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[:, P:], ref[:, P:], atol=1e-3)


def test_windowed_grads_and_checkpointing(tiny_kwargs):
    kw = dict(window_size=3, window_block_indexes=[0], **tiny_kwargs)
    a = DINOv2Backbone(**kw).train()
    _randomize(a)
    b = DINOv2Backbone(use_act_checkpoint=True, **kw).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 80, 112)  # 5 x 7 grid, padded to 6 x 9
    a(x)["last_feat"].square().mean().backward()
    b(x)["last_feat"].square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pa.grad is not None and torch.isfinite(pa.grad).all(), name
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_training_after_inference_mode(tiny_kwargs):
    """The cached window layout of an inference-mode forward must not leak into training."""
    net = DINOv2Backbone(window_size=3, window_block_indexes=[0], **tiny_kwargs)
    x = torch.randn(1, 3, 80, 112)
    with torch.inference_mode():
        ref = net(x)["last_feat"]
    out = net(x)["last_feat"]
    out.sum().backward()
    torch.testing.assert_close(out.detach(), ref)


def test_default_recipe_and_validation(tiny_kwargs):
    assert default_window_block_indexes(12) == [0, 1, 3, 4, 6, 7, 9, 10]
    assert [i for i in range(24) if i not in default_window_block_indexes(24)] == [5, 11, 17, 23]
    assert [i for i in range(40) if i not in default_window_block_indexes(40)] == [9, 19, 29, 39]
    with pytest.raises(ValueError, match="window_block_indexes is empty"):
        DINOv2Backbone(window_size=4, **tiny_kwargs)
    with pytest.raises(ValueError, match="out of range"):
        DINOv2Backbone(window_size=4, window_block_indexes=[2], **tiny_kwargs)
    net = DINOv2Backbone(window_size=4, window_block_indexes=[-1], **tiny_kwargs)
    assert isinstance(net.vit.blocks[1].attn, WindowedAttention)
    assert enable_window_attention(net.vit, 0, [0]) is net.vit  # 0: off, nothing changes
    assert not isinstance(net.vit.blocks[0].attn, WindowedAttention)


def test_window_attention_from_yacs_config(tiny_maskrcnn_cfg):
    from detectron2.layers import ShapeSpec

    from d2reg import build_d2reg_sfp_backbone

    cfg = tiny_maskrcnn_cfg(WINDOW_SIZE=4, WINDOW_BLOCK_INDEXES=[0])
    model = build_d2reg_sfp_backbone(cfg, ShapeSpec(channels=3)).eval()
    assert isinstance(model.net.vit.blocks[0].attn, WindowedAttention)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 128))
    assert out["p2"].shape == (1, 32, 24, 32)
