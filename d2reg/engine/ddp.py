"""``create_ddp_model`` that also works for CPU (gloo) processes."""
from __future__ import annotations

from detectron2.engine.defaults import create_ddp_model as _d2_create_ddp_model
from detectron2.utils import comm

__all__ = ["create_ddp_model"]


def create_ddp_model(model, *, fp16_compression: bool = False, **kwargs):
    """detectron2's ``create_ddp_model`` (``DistributedDataParallel`` when there are > 1 processes;
    ``find_unused_parameters`` stays False unless given). detectron2 always passes
    ``device_ids=[local_rank]``, which DDP rejects for a model on the CPU; CPU models get
    ``device_ids=None`` here."""
    if comm.get_world_size() > 1 and "device_ids" not in kwargs:
        if next(model.parameters()).device.type == "cpu":
            kwargs["device_ids"] = None
    return _d2_create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)
