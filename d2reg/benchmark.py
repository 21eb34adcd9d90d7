"""Speed, memory and FLOP benchmark of the d2reg backbone against the alternatives.

Used by ``tools/benchmark.py`` (the CLI); the pieces are importable for tests and notebooks.

Cases (all random-initialised, nothing is downloaded), per input size S and batch size B:

=============  ==============================================================================
d2reg          :class:`DINOv2Backbone` at patch 16, input S rounded up to a multiple of 16
d2reg+sfp      the same inside detectron2's simple feature pyramid (p2-p6, 256 channels)
timm           bare timm ``vit_*_patch14_reg4_dinov2`` built at patch 16 for exactly that input
               size (no position-embedding interpolation at run time), ``forward_features``
d2reg-p14      :class:`DINOv2Backbone` at patch 14 with S rounded to the nearest multiple of 14
               (what users run without the 14->16 resize: 1022 for 1024)
hf             transformers' ``Dinov2WithRegistersBackbone`` (SDPA attention) at patch 16 and the
               d2reg input size: the same tokens, another implementation (skipped if not installed)
d2reg-ckpt     d2reg with per-block activation checkpointing (training step only)
d2reg-win      d2reg with 14x14 windowed attention, ViTDet's 4 global blocks
=============  ==============================================================================

Timings: ``warmup`` untimed rounds, then ``repeats`` rounds in which every case runs once, the
order alternating A,B,..,B,A so that drift in a shared machine's load hits all cases alike; the
median is reported. Forward runs under ``torch.inference_mode``; the training step is forward +
backward of the mean of the outputs (parameter gradients set to None before each step).
``--dtype bf16`` runs under ``torch.autocast`` (weights stay fp32, as in mixed-precision training).

Memory: peak CUDA ``max_memory_allocated`` above the allocation before the step, or on the CPU the
peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) above the RSS before the
step. For the CPU numbers glibc's ``mmap`` threshold is pinned to 1 MiB in the memory pass (which
runs after all timings), so freed activations go back to the OS and RSS follows live tensors.

FLOPs: fvcore's ``FlopCountAnalysis``, which counts one multiply-add as one "flop" (MACs), plus a
handle for ``aten::scaled_dot_product_attention`` that fvcore lacks: ``q @ k^T`` and ``attn @ v``
are ``B*heads*Lq*Lk*d`` MACs each (the softmax is not counted, as fvcore counts no elementwise op).
Reported GMAC are these MACs; achieved FLOP/s = 2 * MACs / time, compared with the machine's own
dense matmul FLOP/s (``2 n^3 / t``) as the ceiling.
"""
from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

__all__ = [
    "ALL_CASES",
    "Case",
    "count_macs",
    "matmul_flops",
    "run_benchmark",
    "sdpa_flop_jit",
    "format_report",
]

ALL_CASES = ("d2reg", "d2reg+sfp", "timm", "d2reg-p14", "hf", "d2reg-ckpt", "d2reg-win")
STEP_CASES = ("d2reg", "d2reg-ckpt", "d2reg-win")  # cases whose training step is timed by default
WINDOW_SIZE = 14


# ---------------------------------------------------------------------------------------- FLOPs
def sdpa_flop_jit(inputs, outputs) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: MACs of ``q @ k^T`` plus ``attn @ v``
    (``B*heads*Lq*Lk*d_qk + B*heads*Lq*Lk*d_v``); softmax, scaling and masking are not counted."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    batch_lq = math.prod(q[:-1])  # q: (..., Lq, d); k: (..., Lk, d); v: (..., Lk, dv)
    return batch_lq * k[-2] * q[-1] + batch_lq * k[-2] * v[-1]


class _Flat(nn.Module):
    """Tensor-tuple outputs for tracing (fvcore) whatever the model returns."""

    def __init__(self, model: nn.Module, call: Optional[Callable] = None):
        super().__init__()
        self.model, self.call = model, call

    def forward(self, x):
        return tuple(_outputs(self.model(x) if self.call is None else self.call(self.model, x)))


def count_macs(model: nn.Module, x: torch.Tensor, call: Optional[Callable] = None) -> Dict[str, float]:
    """MACs of ``model(x)`` (or ``call(model, x)``) for the batch in ``x``: ``{"total": ..., "attention":
    ..., "by_op": {...}}`` (fvcore, with the scaled-dot-product-attention handle)."""
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        analysis = FlopCountAnalysis(_Flat(model, call), (x,))
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_op = dict(analysis.by_operator())
    return {
        "total": float(sum(by_op.values())),
        "attention": float(by_op.get("scaled_dot_product_attention", 0)),
        "by_op": {k: float(v) for k, v in by_op.items()},
    }


# ---------------------------------------------------------------------------------------- helpers
def _outputs(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return list(out.values())
    if hasattr(out, "feature_maps"):  # transformers BackboneOutput
        return list(out.feature_maps)
    return list(out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: Optional[int] = None,
                 repeats: int = 5) -> float:
    """The machine's dense matmul FLOP/s (``2 n^3 / t``, median of ``repeats``), the ceiling for the
    achieved FLOP/s of a model. TF32 is left as configured (off by default: true fp32)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            if i:
                times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def _matmul_probe(device: torch.device, dtype: torch.dtype, n: Optional[int] = None, calls: int = 3):
    """(fn, FLOPs per fn call): ``calls`` square matmuls, timed among the model runs so that the
    ceiling is sampled under the same (possibly shared) machine load as the models."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run():
        with torch.inference_mode():
            for _ in range(calls):
                torch.mm(a, b)

    return run, 2 * n ** 3 * calls


def kernel_flops(batch: int, tokens: int, dim: int, heads: int, device: torch.device, dtype: str = "fp32",
                 repeats: int = 3) -> Dict[str, float]:
    """FLOP/s of the two kernels a ViT forward is made of, at the model's shapes: the attention
    (``F.scaled_dot_product_attention`` on (B, heads, N, d)) and the MLP's first linear layer
    ((B*N, C) x (C, 4C)). Explains where the achieved FLOP/s stands against the matmul ceiling."""
    import torch.nn.functional as F

    hd = dim // heads
    q, k, v = (torch.randn(batch, heads, tokens, hd, device=device) for _ in range(3))
    x = torch.randn(batch * tokens, dim, device=device)
    w = torch.randn(4 * dim, dim, device=device)
    b = torch.randn(4 * dim, device=device)
    fns = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v), "linear": lambda: F.linear(x, w, b)}
    flops = {"sdpa": 4 * batch * heads * tokens * tokens * hd, "linear": 2 * batch * tokens * dim * 4 * dim}
    out = {}
    with torch.inference_mode(), _autocast(device, dtype):
        times = time_interleaved(fns, device, warmup=1, repeats=repeats)
    for name, ts in times.items():
        out[f"{name}_flops"] = flops[name] / statistics.median(ts)
    return out


# ---------------------------------------------------------------------------------------- memory
class _CpuPeak:
    """Peak RSS above the current RSS, through Linux's resettable high-water mark (``VmHWM``)."""

    def __init__(self):
        self.libc = None
        try:
            self.libc = ctypes.CDLL("libc.so.6")
        except OSError:
            pass
        self.available = self._reset()

    @staticmethod
    def _status(field_name: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field_name)

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def pin_mmap_threshold(self) -> None:
        if self.libc is not None:
            self.libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB (also stops its dynamic growth)
            self.libc.mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD

    def measure(self, fn: Callable) -> Optional[int]:
        if not self.available:
            return None
        gc.collect()
        if self.libc is not None:
            self.libc.malloc_trim(0)
        base = self._status("VmRSS")
        self._reset()
        fn()
        return self._status("VmHWM") - base


def _cuda_peak(fn: Callable, device: torch.device) -> int:
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


# ---------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One model at one input size: ``build()`` -> module, ``call(module, x)`` -> outputs."""

    name: str
    size: int  # input side in pixels (square input)
    patch: int
    build: Callable[[], nn.Module]
    call: Optional[Callable[[nn.Module, torch.Tensor], object]] = None  # None: module(x)
    step: bool = True  # measure the training step (run_benchmark: if named in step_cases)
    forward: bool = True  # measure the forward (run_benchmark: if named in cases)
    module: Optional[nn.Module] = field(default=None, repr=False)

    def run(self, module: nn.Module, x: torch.Tensor):
        return module(x) if self.call is None else self.call(module, x)

    def get(self, device) -> nn.Module:
        if self.module is None:
            torch.manual_seed(0)
            self.module = self.build().to(device)
        return self.module


def _timm_name(arch: str, num_register_tokens: int) -> str:
    base = {"vit_small": "vit_small", "vit_base": "vit_base", "vit_large": "vit_large", "vit_giant2": "vit_giant"}
    return f"{base[arch]}_patch14_{'reg4_' if num_register_tokens else ''}dinov2"


def make_cases(arch: str, size: int, names: Sequence[str], num_register_tokens: int = 4,
               arch_overrides: Optional[dict] = None, pretrain_img_size: int = 518) -> List[Case]:
    """The benchmark's cases at input ``size`` (see the module doc); unknown names raise."""
    from .modeling import DINOv2Backbone, SimpleFeaturePyramid
    from .modeling.vit import get_arch
    from .modeling.window import default_window_block_indexes

    arch_overrides = {k: v for k, v in (arch_overrides or {}).items() if v}
    spec = get_arch(arch, **arch_overrides)
    s16 = -(-size // 16) * 16
    s14 = max(14, round(size / 14) * 14)
    common = dict(arch=arch, num_register_tokens=num_register_tokens, pretrain_img_size=pretrain_img_size,
                  **arch_overrides)

    def backbone(**kw):
        return lambda: DINOv2Backbone(**common, **kw)

    def pyramid():
        from detectron2.modeling.backbone.fpn import LastLevelMaxPool

        return SimpleFeaturePyramid(DINOv2Backbone(**common), "last_feat", 256, (4.0, 2.0, 1.0, 0.5),
                                    LastLevelMaxPool(), "LN")

    def bare_timm():
        import timm

        return timm.create_model(
            _timm_name(arch, num_register_tokens), pretrained=False, patch_size=16, img_size=s16, num_classes=0,
            embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads,
        )

    def hf():
        from transformers import Dinov2WithRegistersBackbone, Dinov2WithRegistersConfig

        cfg = Dinov2WithRegistersConfig(
            hidden_size=spec.embed_dim, num_hidden_layers=spec.depth, num_attention_heads=spec.num_heads,
            patch_size=16, image_size=pretrain_img_size, num_register_tokens=num_register_tokens,
            use_swiglu_ffn=spec.swiglu, layerscale_value=1e-5, out_features=[f"stage{spec.depth}"],
        )
        cfg._attn_implementation = "sdpa"
        return Dinov2WithRegistersBackbone(cfg)

    table = {
        "d2reg": lambda: Case("d2reg", s16, 16, backbone()),
        "d2reg+sfp": lambda: Case("d2reg+sfp", s16, 16, pyramid),
        "timm": lambda: Case("timm", s16, 16, bare_timm, call=lambda m, x: m.forward_features(x)),
        "d2reg-p14": lambda: Case("d2reg-p14", s14, 14, backbone(patch_size=14)),
        "hf": lambda: Case("hf", s16, 16, hf),
        "d2reg-ckpt": lambda: Case("d2reg-ckpt", s16, 16, backbone(use_act_checkpoint=True), forward=False),
        "d2reg-win": lambda: Case("d2reg-win", s16, 16, backbone(
            window_size=WINDOW_SIZE, window_block_indexes=default_window_block_indexes(spec.depth))),
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown benchmark cases {unknown}; choose from {list(table)}")
    cases = []
    for n in names:
        if n == "hf":
            try:
                import transformers  # noqa: F401
            except ImportError:
                continue
        cases.append(table[n]())
    return cases


# ---------------------------------------------------------------------------------------- running
def _forward_fn(case: Case, x: torch.Tensor, dtype: str) -> Callable[[], None]:
    model = case.get(x.device).eval()

    def run():
        with torch.inference_mode(), _autocast(x.device, dtype):
            case.run(model, x)

    return run


def _step_fn(case: Case, x: torch.Tensor, dtype: str) -> Callable[[], None]:
    model = case.get(x.device).train()

    def run():
        for p in model.parameters():
            p.grad = None
        with _autocast(x.device, dtype):
            outs = _outputs(case.run(model, x))
        sum(o.float().mean() for o in outs).backward()

    return run


def time_interleaved(fns: Dict[str, Callable[[], None]], device: torch.device, warmup: int = 1,
                     repeats: int = 3) -> Dict[str, List[float]]:
    """Seconds per call of every fn, measured in rounds (A,B,..) then (..,B,A) alternately."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(reversed(list(fns)))
        for k in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[k]()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def _machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _loadavg() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run_benchmark(
    arch: str = "vit_small",
    sizes: Sequence[int] = (1024,),
    batch_sizes: Sequence[int] = (1,),
    cases: Sequence[str] = ALL_CASES,
    step_cases: Sequence[str] = STEP_CASES,
    device: str = "cpu",
    dtype: str = "fp32",
    warmup: int = 1,
    repeats: int = 3,
    memory: bool = True,
    flops: bool = True,
    num_register_tokens: int = 4,
    arch_overrides: Optional[dict] = None,
    pretrain_img_size: int = 518,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the benchmark; returns a JSON-able dict (``machine``, ``ceiling``, ``results``, ``targets``)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available here")
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
    report = {
        "config": dict(arch=arch, sizes=list(sizes), batch_sizes=list(batch_sizes), cases=list(cases),
                       step_cases=list(step_cases), device=device, dtype=dtype, warmup=warmup, repeats=repeats,
                       num_register_tokens=num_register_tokens, arch_overrides=arch_overrides or {}),
        "machine": _machine(dev),
        "loadavg_start": _loadavg(),
        "ceiling": {},
        "results": [],
    }
    log(f"machine: {report['machine']['cpu']}, {report['machine']['threads']} threads"
        + (f", {report['machine']['gpu']}" if "gpu" in report["machine"] else ""))
    report["ceiling"]["fp32"] = matmul_flops(dev, torch.float32)
    if dtype == "bf16" or dev.type == "cuda":
        report["ceiling"]["bf16"] = matmul_flops(dev, torch.bfloat16)
    log("matmul ceiling: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in report["ceiling"].items()))

    rows: List[dict] = []
    pending_memory = []
    for size in sizes:
        names = list(dict.fromkeys(list(cases) + list(step_cases)))
        size_cases = make_cases(arch, size, names, num_register_tokens, arch_overrides, pretrain_img_size)
        for c in size_cases:
            c.forward = c.forward and c.name in cases
            c.step = c.step and c.name in step_cases
        macs: Dict[str, Optional[dict]] = {}
        if flops:
            for c in [c for c in size_cases if c.forward]:
                x1 = torch.randn(1, 3, c.size, c.size, device=dev)
                model = c.get(dev).eval()
                try:
                    macs[c.name] = count_macs(model, x1, c.call)
                except Exception as e:  # noqa: BLE001 - tracing of third-party models may fail
                    log(f"  fvcore could not trace {c.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                    macs[c.name] = None
        for bs in batch_sizes:
            inputs = {c.name: torch.randn(bs, 3, c.size, c.size, device=dev) for c in size_cases}
            fwd = {c.name: _forward_fn(c, inputs[c.name], dtype) for c in size_cases if c.forward}
            t_fwd = {}
            ceiling = report["ceiling"]["bf16" if dtype == "bf16" else "fp32"]
            if fwd:
                log(f"size {size}, batch {bs}: forward of {list(fwd)} ...")
                probe, probe_flops = _matmul_probe(dev, torch.bfloat16 if dtype == "bf16" else torch.float32)
                t_fwd = time_interleaved({**fwd, "_matmul": probe}, dev, warmup, repeats)
                ceiling = probe_flops / statistics.median(t_fwd.pop("_matmul"))
                report.setdefault("ceiling_interleaved", []).append(dict(size=size, batch=bs, flops=ceiling))
                log(f"  matmul ceiling sampled among the forwards: {ceiling / 1e12:.3f} TFLOP/s")
            steps = {c.name: _step_fn(c, inputs[c.name], dtype) for c in size_cases if c.step}
            t_step = {}
            if steps:
                log(f"size {size}, batch {bs}: training step of {list(steps)} ...")
                t_step = time_interleaved(steps, dev, warmup, repeats)
            if "d2reg" in fwd:
                from .modeling.vit import get_arch

                spec = get_arch(arch, **{k: v for k, v in (arch_overrides or {}).items() if v})
                d2 = next(c for c in size_cases if c.name == "d2reg")
                tokens = (d2.size // d2.patch) ** 2 + 1 + num_register_tokens
                kern = kernel_flops(bs, tokens, spec.embed_dim, spec.num_heads, dev, dtype)
                report.setdefault("kernels", []).append(dict(size=size, batch=bs, tokens=tokens, **kern))
                log("  kernels: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in kern.items()))
            for c in size_cases:
                m = macs.get(c.name)
                row = {"case": c.name, "size": size, "input": c.size, "patch": c.patch, "batch": bs,
                       "tokens": (c.size // c.patch) ** 2,
                       "gmac": m["total"] * bs / 1e9 if m else None,
                       "attention_gmac": m["attention"] * bs / 1e9 if m else None,
                       "fwd_times": t_fwd.get(c.name), "step_times": t_step.get(c.name)}
                for key in ("fwd", "step"):
                    ts = row[f"{key}_times"]
                    row[f"{key}_s"] = statistics.median(ts) if ts else None
                    row[f"{key}_ips"] = bs / row[f"{key}_s"] if ts else None
                if row["gmac"] and row["fwd_s"]:
                    row["fwd_tflops"] = 2 * row["gmac"] / row["fwd_s"] / 1e3
                    row["fwd_ceiling_frac"] = row["fwd_tflops"] * 1e12 / ceiling
                rows.append(row)
                if memory:
                    pending_memory.append((row, c, inputs[c.name]))
        report["results"] = rows
    if memory:
        log("memory pass ...")
        cpu_peak = _CpuPeak() if dev.type == "cpu" else None
        if cpu_peak is not None:
            cpu_peak.pin_mmap_threshold()
        for row, c, x in pending_memory:
            for key, make, wanted in (("fwd", _forward_fn, c.forward), ("step", _step_fn, c.step)):
                if not wanted:
                    continue
                fn = make(c, x, dtype)
                fn()  # first call allocates lazily created state (grads, caches)
                peak = cpu_peak.measure(fn) if cpu_peak is not None else _cuda_peak(fn, dev)
                row[f"{key}_peak_mib"] = peak / 2 ** 20 if peak is not None else None
    for c_row in rows:
        c_row.setdefault("fwd_peak_mib", None)
        c_row.setdefault("step_peak_mib", None)
    report["loadavg_end"] = _loadavg()
    report["results"] = rows
    report["targets"] = evaluate_targets(rows, report["ceiling"], dtype)
    return report


# ---------------------------------------------------------------------------------------- targets
def _find(rows, case, size, batch):
    for r in rows:
        if r["case"] == case and r["size"] == size and r["batch"] == batch:
            return r
    return None


def _ratio(a: dict, b: dict, key: str) -> float:
    """Time ratio a / b: the median of the per-round ratios (the two ran next to each other in each
    round, so a load change between rounds cancels), else the ratio of the medians."""
    ta, tb = a.get(f"{key}_times"), b.get(f"{key}_times")
    if ta and tb and len(ta) == len(tb):
        return statistics.median(x / y for x, y in zip(ta, tb))
    return a[f"{key}_s"] / b[f"{key}_s"]


def evaluate_targets(rows: List[dict], ceiling: Dict[str, float], dtype: str = "fp32") -> List[dict]:
    """The issue's targets from the measured rows (every size/batch where the cases exist)."""
    out = []

    def add(name, size, batch, value, goal, ok, detail=""):
        out.append({"target": name, "size": size, "batch": batch, "value": value, "goal": goal, "met": ok,
                    "detail": detail})

    for r in rows:
        if r["case"] != "d2reg":
            continue
        size, bs = r["size"], r["batch"]
        timm_r, p14 = _find(rows, "timm", size, bs), _find(rows, "d2reg-p14", size, bs)
        ck, win, sfp = (_find(rows, n, size, bs) for n in ("d2reg-ckpt", "d2reg-win", "d2reg+sfp"))
        if timm_r and r["fwd_s"] and timm_r["fwd_s"]:
            v = _ratio(r, timm_r, "fwd")
            add("forward time d2reg / bare timm", size, bs, v, "<= 1.05", v <= 1.05)
        if p14 and r["fwd_ips"] and p14["fwd_ips"]:
            v = _ratio(p14, r, "fwd")  # throughput ratio = inverse time ratio
            extra = f"FLOP ratio {p14['gmac'] / r['gmac']:.2f}" if r["gmac"] and p14["gmac"] else ""
            add(f"throughput patch16@{r['input']} / patch14@{p14['input']}", size, bs, v, ">= 1.5", v >= 1.5, extra)
        if r.get("fwd_ceiling_frac") is not None:
            v = r["fwd_ceiling_frac"]
            extra = ""
            if timm_r and timm_r.get("fwd_ceiling_frac") is not None:
                extra = f"bare timm {timm_r['fwd_ceiling_frac']:.0%}"
            add(f"forward FLOP/s / {dtype} matmul FLOP/s", size, bs, v, ">= 0.75", v >= 0.75, extra)
        if ck and r.get("step_peak_mib") and ck.get("step_peak_mib") and r["step_s"] and ck["step_s"]:
            m, t = ck["step_peak_mib"] / r["step_peak_mib"], _ratio(ck, r, "step")
            add("act. checkpointing: step memory ratio", size, bs, m, "<= 0.50", m <= 0.5)
            add("act. checkpointing: step time ratio", size, bs, t, "<= 1.4", t <= 1.4)
        if win and r["fwd_s"] and win["fwd_s"]:
            v = _ratio(r, win, "fwd")
            add("window speed-up (forward), global / windowed", size, bs, v, ">= 1.5", v >= 1.5)
        if win and r["step_s"] and win["step_s"]:
            v = _ratio(r, win, "step")
            add("window speed-up (training step)", size, bs, v, "(report)", None)
        if sfp and r["fwd_s"] and sfp["fwd_s"]:
            v = _ratio(sfp, r, "fwd")
            add("pyramid cost: (backbone+SFP) / backbone forward", size, bs, v, "(report)", None)
    hf_rows = [r for r in rows if r["case"] == "hf"]
    for h in hf_rows:
        r = _find(rows, "d2reg", h["size"], h["batch"])
        if r and r["fwd_s"] and h["fwd_s"]:
            add("forward time d2reg / transformers", h["size"], h["batch"], _ratio(r, h, "fwd"), "(report)", None)
    return out


# ---------------------------------------------------------------------------------------- output
def _fmt(v, spec=".2f", scale=1.0):
    return "-" if v is None else format(v * scale, spec)


def format_report(report: dict) -> str:
    """Markdown tables: machine, results per case, targets."""
    from tabulate import tabulate

    cfg, mach = report["config"], report["machine"]
    lines = [
        f"machine: {mach['cpu']}" + (f", {mach['gpu']}" if "gpu" in mach else "")
        + f"; {mach['threads']} torch threads; torch {mach['torch']}; {cfg['device']} {cfg['dtype']}; "
        f"load average {_fmt(report.get('loadavg_start'))} at start, {_fmt(report.get('loadavg_end'))} at end",
        "matmul ceiling: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in report["ceiling"].items())
        + "".join(f"; sampled among the forwards at {c['size']}/b{c['batch']}: {c['flops'] / 1e12:.3f}"
                  for c in report.get("ceiling_interleaved", [])),
        f"{cfg['arch']} {cfg.get('arch_overrides') or ''}, median of {cfg['repeats']} interleaved runs "
        f"after {cfg['warmup']} warm-up",
        "",
    ]
    headers = ["case", "input", "patch", "batch", "GMAC", "attn GMAC", "fwd img/s", "fwd ms", "fwd TFLOP/s",
               "% ceiling", "step img/s", "step ms", "fwd peak MiB", "step peak MiB"]
    table = [[r["case"], r["input"], r["patch"], r["batch"], _fmt(r["gmac"], ".4g"), _fmt(r["attention_gmac"], ".4g"),
              _fmt(r["fwd_ips"], ".3f"), _fmt(r["fwd_s"], ".0f", 1e3), _fmt(r.get("fwd_tflops"), ".3f"),
              _fmt(r.get("fwd_ceiling_frac"), ".0f", 100), _fmt(r["step_ips"], ".3f"), _fmt(r["step_s"], ".0f", 1e3),
              _fmt(r["fwd_peak_mib"], ".0f"), _fmt(r["step_peak_mib"], ".0f")] for r in report["results"]]
    lines.append(tabulate(table, headers=headers, tablefmt="github"))
    if report.get("kernels"):
        lines.append("")
        kt = [[k["size"], k["batch"], k["tokens"], _fmt(k["sdpa_flops"], ".3f", 1e-12),
               _fmt(k["linear_flops"], ".3f", 1e-12)] for k in report["kernels"]]
        lines.append(tabulate(kt, headers=["size", "batch", "tokens", "SDPA TFLOP/s", "MLP linear TFLOP/s"],
                              tablefmt="github"))
    if report.get("targets"):
        lines.append("")
        tt = [[t["target"], t["size"], t["batch"], _fmt(t["value"], ".3f"), t["goal"],
               {True: "yes", False: "NO", None: ""}[t["met"]], t["detail"]] for t in report["targets"]]
        lines.append(tabulate(tt, headers=["target", "size", "batch", "measured", "goal", "met", "note"],
                              tablefmt="github"))
    return "\n".join(lines)


def save_report(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
