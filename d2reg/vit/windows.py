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

__all__ = ["WindowGrid"]


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
        """
        h, w = self.hw
        inference = not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()
        key = (h, w, window_size, num_prefix, str(device), inference)
        found = self._layouts.get(key)
        if found is not None:
            return found
        ws, P = window_size, num_prefix
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        nh_, nw_ = hp // ws, wp // ws
        ids = torch.full((hp, wp), -1, dtype=torch.long, device=device)
        ids[:h, :w] = torch.arange(h * w, device=device).view(h, w)
        win = ids.view(nh_, ws, nw_, ws).permute(0, 2, 1, 3).reshape(nh_ * nw_, ws * ws)  # -1 = padding
        nw = win.shape[0]
        real = win >= 0
        slots = win.clamp(min=0) + P
        q_idx = slots.flatten()
        prefix = torch.arange(P, device=device).expand(nw, P)
        kv_idx = torch.cat([prefix, slots], dim=1).flatten()
        back = torch.empty(h * w, dtype=torch.long, device=device)
        back[win[real]] = torch.arange(nw * ws * ws, device=device).view(nw, ws * ws)[real]
        mask = None
        if (hp, wp) != (h, w):
            mask = torch.cat([torch.ones_like(prefix, dtype=torch.bool), real], dim=1)[:, None, None, :]
        if len(self._layouts) > 16:
            self._layouts.clear()
        found = self._layouts[key] = (q_idx, kv_idx, back, mask, nw)
        return found
