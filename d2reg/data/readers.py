"""Data readers detectron2's defaults get wrong on current NumPy."""
from __future__ import annotations

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["load_sem_seg_gt"]


def load_sem_seg_gt(filename: str, dtype=int) -> np.ndarray:
    """Ground-truth PNG -> (H, W) array, for ``SemSegEvaluator(sem_seg_loading_fn=...)``. detectron2's
    default loader calls ``np.array(..., copy=False)``, which NumPy >= 2 rejects for PIL images."""
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)
