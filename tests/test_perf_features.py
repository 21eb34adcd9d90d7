"""Performance features: SDPA everywhere, activation checkpointing (non-reentrant, identical grads),
bf16 autocast, torch.compile, FLOP counting with attention, and the benchmark tool itself."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from _tools import load_tool

from d2reg import DINOv2Backbone
from d2reg.modeling.window import WindowedAttention
from d2reg.testing import TINY_DEEP_ARCH, TINY_IMG


def _tiny(tiny_kwargs, seed=0, **kw):
    torch.manual_seed(seed)
    net = DINOv2Backbone(**tiny_kwargs, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if "norm" in name and "weight" in name else 0.0))
    return net


def _grads(net, x, run=None):
    """Gradients of ``net``'s parameters after a backward through ``run(x)`` (default ``net(x)``)."""
    for p in net.parameters():
        p.grad = None
    (net if run is None else run)(x)["last_feat"].square().mean().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("window", [False, True])
def test_every_attention_goes_through_sdpa(tiny_kwargs, monkeypatch, window):
    import timm.layers

    assert timm.layers.use_fused_attn(), "timm's fused attention (F.scaled_dot_product_attention) is off"
    kw = dict(window_size=3, window_block_indexes=[0]) if window else {}
    net = _tiny(tiny_kwargs, **kw).eval()
    for blk in net.vit.blocks:
        assert isinstance(blk.attn, WindowedAttention) or blk.attn.fused_attn
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        net(torch.randn(1, 3, 96, 80))
    # a global block: 1 call; a windowed block: 2 (prefix queries + windows)
    assert len(calls) == (3 if window else 2)


@pytest.mark.parametrize("freeze_at", [0, 1])
def test_act_checkpointing_identical_grads_non_reentrant(tiny_kwargs, freeze_at):
    """Same gradients with and without checkpointing, each block recomputed in the backward pass.
    freeze_at=1 (stem frozen: the blocks' input needs no grad) only works with the non-reentrant
    checkpoint: the reentrant one would silently give the blocks no gradient."""
    from timm.layers import use_reentrant_ckpt

    assert not use_reentrant_ckpt()
    x = torch.randn(2, 3, 64, 96)
    plain = _tiny(tiny_kwargs, freeze_at=freeze_at).train()
    ckpt = _tiny(tiny_kwargs, freeze_at=freeze_at, use_act_checkpoint=True).train()
    assert ckpt.vit.grad_checkpointing
    runs = []
    ckpt.vit.blocks[0].register_forward_pre_hook(lambda *a: runs.append(1))  # pre: recompute stops early
    g_plain, g_ckpt = _grads(plain, x), _grads(ckpt, x)
    assert len(runs) == 2  # forward + recomputation in backward
    assert g_plain.keys() == g_ckpt.keys()
    assert any(k.startswith("vit.blocks.0.") for k in g_ckpt)
    for k in g_plain:
        torch.testing.assert_close(g_ckpt[k], g_plain[k], rtol=1e-5, atol=1e-6, msg=k)


def test_act_checkpointing_from_config(tiny_maskrcnn_cfg):
    from d2reg import DINOv2Backbone as B

    assert B(tiny_maskrcnn_cfg(USE_ACT_CHECKPOINT=True)).vit.grad_checkpointing


@pytest.mark.parametrize("window", [False, True])
def test_bf16_autocast_cpu(tiny_kwargs, window):
    kw = dict(window_size=3, window_block_indexes=[0]) if window else {}
    net = _tiny(tiny_kwargs, **kw).train()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = net(x)["last_feat"]
    dtypes = []
    for blk in net.vit.blocks:
        blk.attn.qkv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)["last_feat"]  # the residual stream stays fp32 (fp32 + bf16 -> fp32)
    assert dtypes == [torch.bfloat16] * len(net.vit.blocks)
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 0.05, err
    out.float().square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("window", [False, True])
def test_torch_compile_fullgraph_forward_backward(tiny_kwargs, window):
    """The whole backbone (windowed blocks and their grid hook included) compiles as one graph; the
    compiled forward and gradients match eager. aot_eager: dynamo + AOTAutograd, no C++ codegen."""
    kw = dict(window_size=3, window_block_indexes=[0]) if window else {}
    net = _tiny(tiny_kwargs, **kw).train()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 3, 64, 96)
    g_eager = _grads(net, x)
    g_comp = _grads(net, x, run=compiled)
    assert g_comp.keys() == g_eager.keys()
    for k in g_eager:
        torch.testing.assert_close(g_comp[k], g_eager[k], rtol=1e-4, atol=1e-6, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)["last_feat"], net(x)["last_feat"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # C++ code generation, ~70 s on a loaded 2-core CPU: pytest --runslow
def test_torch_compile_inductor_cpu(tiny_kwargs):
    """Default backend (inductor): one block, inference. The aot_eager test above already checks that
    dynamo captures the backbone as one graph; this one adds inductor's code generation."""
    net = _tiny(dict(tiny_kwargs, depth=1)).eval()
    compiled = torch.compile(net, fullgraph=True)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)["last_feat"], net(x)["last_feat"], rtol=1e-4, atol=1e-5)


def test_flop_count_includes_attention(tiny_kwargs):
    from d2reg.benchmark import count_macs

    net = _tiny(tiny_kwargs).eval()
    x = torch.randn(2, 3, 64, 96)  # 4 x 6 grid + 5 prefix tokens
    macs = count_macs(net, x)
    n, d, heads, depth, batch = 24 + 5, 16, 2, 2, 2
    assert macs["attention"] == depth * 2 * batch * heads * n * n * d  # q@k^T and attn@v
    linear = depth * batch * n * (32 * 96 + 32 * 32 + 2 * 32 * 128)  # qkv, proj, fc1, fc2
    assert macs["by_op"]["linear"] == linear
    assert macs["total"] > macs["attention"] + linear  # + patch embed conv, layer norms


def test_cpu_peak_memory_sees_a_large_tensor():
    from d2reg.benchmark.measure import _CpuPeak

    meter = _CpuPeak()
    if not meter.available:
        pytest.skip("no resettable VmHWM (/proc/self/clear_refs) here")
    meter.pin_mmap_threshold()
    peak = meter.measure(lambda: torch.ones(64, 2 ** 20 // 4).sum())  # 64 MiB, freed before return
    assert 60 * 2 ** 20 < peak < 200 * 2 ** 20


def test_benchmark_tool_tiny(tmp_path):
    tool = load_tool("benchmark")
    out = tmp_path / "bench.json"
    arch = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_DEEP_ARCH.items()]  # 4 blocks: windowed + global
    rc = tool.main([*arch, "--pretrain-img-size", str(TINY_IMG), "--sizes", "64", "--warmup", "0", "--repeats", "1",
                    "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["ceiling"]["fp32"] > 0
    names = {r["case"] for r in report["results"]}
    assert {"d2reg", "d2reg+sfp", "timm", "d2reg-p14", "d2reg-ckpt", "d2reg-win"} <= names
    assert {"dinov3", "dinov3+sfp", "dinov3-timm", "dinov3-ckpt", "dinov3-win"} <= names
    d2 = next(r for r in report["results"] if r["case"] == "d2reg")
    assert d2["fwd_ips"] > 0 and d2["step_ips"] > 0 and d2["gmac"] > d2["attention_gmac"] > 0
    assert d2["fwd_tflops"] > 0
    targets = {t["target"] for t in report["targets"]}
    assert "forward time d2reg / bare timm" in targets
    assert any(t.startswith("window speed-up") for t in targets)
    v3, v3_timm = (next(r for r in report["results"] if r["case"] == n) for n in ("dinov3", "dinov3-timm"))
    assert v3["fwd_ips"] > 0 and v3["step_ips"] > 0 and v3["gmac"] == pytest.approx(v3_timm["gmac"], rel=0.01)
    assert {"DINOv3: forward time d2reg / bare timm", "DINOv3: window speed-up (forward), global / windowed"} <= targets


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_benchmark_cuda_bf16_smoke(tmp_path):
    from d2reg.benchmark import run_benchmark

    report = run_benchmark(sizes=[64], cases=["d2reg", "d2reg-win"], device="cuda", dtype="bf16", warmup=0,
                           repeats=1, arch_overrides=TINY_DEEP_ARCH,
                           pretrain_img_size=TINY_IMG, log=lambda s: None)
    assert report["ceiling"]["bf16"] > 0
    assert all(r["fwd_peak_mib"] is not None for r in report["results"])


def test_benchmark_tool_eomt_cases(tmp_path):
    """The EoMT cases: EoMT forward / training step (its real set loss) and d2reg's Mask R-CNN on the same tiny
    ViT; the EoMT targets are the ratios of the rows measured."""
    tool = load_tool("benchmark")
    out = tmp_path / "bench.json"
    arch = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_DEEP_ARCH.items()]
    rc = tool.main([*arch, "--pretrain-img-size", str(TINY_IMG), "--sizes", "64", "--warmup", "0", "--repeats", "1",
                    "--no-flops", "--cases", "d2reg", "d2reg-eomt", "d2reg-maskrcnn",
                    "--step-cases", "d2reg-eomt", "d2reg-maskrcnn", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = {r["case"]: r for r in report["results"]}
    assert set(rows) == {"d2reg", "d2reg-eomt", "d2reg-maskrcnn"}
    for name in ("d2reg-eomt", "d2reg-maskrcnn"):
        assert rows[name]["fwd_s"] > 0 and rows[name]["step_s"] > 0 and rows[name]["step_peak_mib"] > 0
    targets = {t["target"]: t for t in report["targets"]}
    eomt, bb, rcnn = rows["d2reg-eomt"], rows["d2reg"], rows["d2reg-maskrcnn"]
    assert targets["EoMT forward / backbone forward"]["value"] == pytest.approx(eomt["fwd_s"] / bb["fwd_s"])
    assert targets["EoMT / Mask R-CNN training step time"]["value"] == pytest.approx(eomt["step_s"] / rcnn["step_s"])
    assert targets["EoMT / Mask R-CNN step peak memory"]["value"] == pytest.approx(
        eomt["step_peak_mib"] / rcnn["step_peak_mib"])


def test_eomt_benchmark_step_is_the_training_loss():
    """The EoMT step case runs the real set loss on its synthetic segments (finite, with gradients to the
    queries and the ViT), and its forward is the masks-off inference."""
    from d2reg.benchmark.run import make_cases

    case, = make_cases("vit_small", 64, ["d2reg-eomt"], arch_overrides=TINY_DEEP_ARCH, pretrain_img_size=TINY_IMG)
    model = case.get("cpu").train()
    x = torch.randn(2, 3, 64, 64)
    losses = case.run(model, x)
    assert {"loss_ce", "loss_mask", "loss_dice"} <= set(losses) and any(k.endswith("_block0") for k in losses)
    sum(losses.values()).backward()
    assert model.q.weight.grad.abs().sum() > 0 and model.backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    masks, classes = case.run(model.eval(), x)
    assert len(masks) == 1 and classes[0].shape == (2, 200, 134)
