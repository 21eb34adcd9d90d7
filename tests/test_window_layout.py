"""d2reg.vit.windows.WindowGrid lays tokens out exactly as detectron2's window_partition /
window_unpartition (the order ViTDet's windowed blocks use), for grids with and without padding."""
import pytest
import torch
from detectron2.modeling.backbone.utils import window_partition, window_unpartition

from d2reg.vit.windows import WindowGrid


@pytest.mark.parametrize("hw, ws", [((6, 8), 2), ((7, 10), 3), ((5, 5), 5), ((3, 4), 6)])
def test_layout_is_detectron2_window_partition(hw, ws):
    h, w = hw
    P = 5
    grid = WindowGrid()
    grid.hw = hw
    q_idx, kv_idx, back, mask, nw = grid.layout(ws, P, torch.device("cpu"))
    tokens = torch.arange(P + h * w, dtype=torch.float32)  # token value = its index
    patches = tokens[P:].view(1, h, w, 1)
    win, pad_hw = window_partition(patches, ws)  # (nw, ws, ws, 1), zero-padded
    assert nw == win.shape[0]
    real = window_partition(torch.ones(1, h, w, 1), ws)[0].flatten(1) > 0
    got = tokens[q_idx].view(nw, ws * ws)
    assert torch.equal(got[real], win.flatten(1)[real])  # same windows, same order, same slots
    assert torch.equal(kv_idx.view(nw, P + ws * ws)[:, :P], torch.arange(P).expand(nw, P))
    slots = torch.arange(nw * ws * ws, dtype=torch.float32).view(nw, ws, ws, 1)
    assert torch.equal(back.float(), window_unpartition(slots, ws, pad_hw, hw).flatten())
    if pad_hw == hw:
        assert mask is None
    else:
        assert torch.equal(mask.view(nw, -1)[:, P:], real) and mask.view(nw, -1)[:, :P].all()
