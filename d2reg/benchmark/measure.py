"""FLOP counting (fvcore + SDPA), the machine's matmul ceiling and peak-memory probes (CPU RSS, CUDA)."""
from __future__ import annotations

import ctypes
import gc
import math
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn


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


def tensor_peak_bytes(fn: Callable) -> int:
    """Peak of the CPU tensor memory allocated above its level at the start of ``fn()``: torch.profiler's
    allocation records (``profile_memory``), each op's net allocation placed at the op's start, freed
    blocks outside ops at their time; so transients inside one op are not seen. CPU tensors only (on
    CUDA use ``max_memory_allocated``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                    for e in prof.events())
    live = peak = 0
    for _, d in deltas:
        live += d
        peak = max(peak, live)
    return peak


def saved_tensor_bytes(fn: Callable, exclude: Optional[nn.Module] = None) -> int:
    """Bytes of the activations autograd saves for backward during ``fn()`` (``saved_tensors_hooks``;
    each storage counted once; the parameters and buffers of ``exclude`` not counted). Blind to what
    activation checkpointing keeps: its own inner hooks replace saved tensors by recomputation handles."""
    skip = set()
    if exclude is not None:
        skip = {t.untyped_storage().data_ptr() for t in list(exclude.parameters()) + list(exclude.buffers())}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def parameter_counts(model: nn.Module) -> Dict[str, float]:
    """``params`` / ``trainable`` (counts), ``weights_mib`` (parameters and buffers as stored) and
    ``adamw_mib`` (AdamW's two fp32 moments per trainable parameter, which a step's peak does not hold)."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    weights = sum(t.numel() * t.element_size() for t in list(params) + list(model.buffers()))
    return {"params": sum(p.numel() for p in params), "trainable": trainable, "weights_mib": weights / 2 ** 20,
            "adamw_mib": 2 * 4 * trainable / 2 ** 20}
