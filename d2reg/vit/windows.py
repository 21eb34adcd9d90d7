"""The window layout shared by the windowed attention of every family (torch only).

A ViT's windowed blocks share one :class:`WindowGrid`: a hook on the patch embedding records the grid
of the image being processed, and each block asks for the token-index layout of its windows (built
once per grid, window size and device). Windows, their order and the bottom/right padding are those
of detectron2's ``window_partition`` (row-major windows over the grid padded to a multiple of the
window), computed here with index arithmetic so the timm level needs no detectron2.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .tracing import is_exporting

__all__ = ["WindowGrid", "exportable_attn_mask"]


def exportable_attn_mask(mask: torch.Tensor, num_queries: int, dtype: torch.dtype) -> torch.Tensor:
    """A boolean key mask ``(n, 1, 1, L)`` (True = attend) as ONNX runtimes take it: additive
    (0 / dtype min) and with the query axis spelt out, ``(n, 1, num_queries, L)`` (onnxruntime's
    Attention does not broadcast over queries; its boolean form gave NaN, the opset-18 decomposition
    of a broadcast mask wrong values)."""
    mask = mask.expand(-1, -1, num_queries, -1)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class WindowGrid:
    """The patch grid (h, w) of the image the ViT is processing (recorded by a hook on patch_embed) and
    the window layouts for it, built once per (grid, window, device)."""

    __slots__ = ("hw", "_layouts")

    def __init__(self):
        self.hw: Optional[Tuple[int, int]] = None
        self._layouts: Dict[tuple, tuple] = {}

    def checked_hw(self, num_tokens: int, num_prefix: int) -> Tuple[int, int]:
        """The recorded grid ``(h, w)``, checked against a block input of ``num_tokens`` tokens."""
        if self.hw is None:
            raise RuntimeError("windowed attention: no patch grid recorded (run the ViT, not the block alone)")
        h, w = self.hw
        if num_tokens != num_prefix + h * w:
            raise RuntimeError(
                f"windowed attention: {num_tokens} tokens do not match the recorded {h}x{w} grid + {num_prefix} "
                "prefix tokens (a forward of another image size ran before this block's recomputation?)"
            )
        return h, w

    def layout(self, window_size: int, num_prefix: int, device: torch.device):
        """``(q_idx, kv_idx, back, mask, num_windows)`` for the current grid, in token indices:

        - ``q_idx`` (nw * ws*ws,): the token of every window query slot (windows row-major over the grid
          padded at the bottom/right to a multiple of ``ws``, detectron2's ``window_partition`` order;
          a padded slot points at the first patch, its output is discarded);
        - ``kv_idx`` (nw * (P + ws*ws),): per window the P prefix tokens, then its slots;
        - ``back`` (h*w,): for every patch token, its slot in the windows' outputs;
        - ``mask``: (nw, 1, 1, P + ws*ws) bool, True = real key; None when the grid needs no padding.

        Index arithmetic on ``arange`` only (no size-dependent branch, no boolean indexing), so an
        exported graph (:func:`is_exporting`) computes the layout for each input size; there the
        mask is always built (all True when nothing is padded) and nothing is cached.
        """
        h, w = self.hw
        exporting = is_exporting()
        key = None
        if not exporting:
            inference = not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()
            key = (h, w, window_size, num_prefix, str(device), inference)
            found = self._layouts.get(key)
            if found is not None:
                return found
        ws, P = window_size, num_prefix
        # windows per column / row; not -(-h // ws): ONNX divides integers truncating towards zero
        nh_, nw_ = (h + ws - 1) // ws, (w + ws - 1) // ws
        nw = nh_ * nw_
        # slot (a, b, u, v): window (a, b), position (u, v) inside it -> grid cell (a*ws + u, b*ws + v)
        rows = (torch.arange(nh_, device=device)[:, None] * ws + torch.arange(ws, device=device)[None, :])
        cols = (torch.arange(nw_, device=device)[:, None] * ws + torch.arange(ws, device=device)[None, :])
        r = rows[:, None, :, None]  # (nh_, 1, ws, 1)
        c = cols[None, :, None, :]  # (1, nw_, 1, ws)
        real = ((r < h) & (c < w)).reshape(nw, ws * ws)  # False = padding
        slots = torch.where(real, (r * w + c).reshape(nw, ws * ws), 0) + P
        q_idx = slots.flatten()
        prefix = torch.arange(P, device=device).expand(nw, P)
        kv_idx = torch.cat([prefix, slots], dim=1).flatten()
        gr = torch.arange(h, device=device)[:, None]
        gc = torch.arange(w, device=device)[None, :]
        back = (((gr // ws) * nw_ + gc // ws) * (ws * ws) + (gr % ws) * ws + gc % ws).flatten()
        mask = None
        if exporting or nh_ * ws != h or nw_ * ws != w:
            mask = torch.cat([torch.ones_like(prefix, dtype=torch.bool), real], dim=1)[:, None, None, :]
        if exporting:
            return q_idx, kv_idx, back, mask, nw
        if len(self._layouts) > 16:
            self._layouts.clear()
        found = self._layouts[key] = (q_idx, kv_idx, back, mask, nw)
        return found
