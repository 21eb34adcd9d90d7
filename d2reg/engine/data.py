"""A training sampler that can skip what a resumed run has already consumed."""
from __future__ import annotations

import itertools

import torch
from detectron2.data import build_detection_train_loader
from detectron2.data.build import _train_loader_from_config
from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler", "build_resumable_train_loader", "resume_loader"]


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's ``TrainingSampler`` (same infinite, seeded, rank-sharded index stream) that
    starts ``skip`` indices into this rank's stream. Set ``skip`` before the loader is iterated.

    detectron2 restarts the stream from its beginning on ``--resume``, so a resumed run sees
    other images than an uninterrupted one; skipping ``start_iter * images_per_rank`` indices gives
    the same images (exactly so with ``DATALOADER.NUM_WORKERS 0`` and one aspect-ratio group).
    Skipping costs no data loading: only indices are drawn.
    """

    def __init__(self, size: int, shuffle: bool = True, seed=None, skip: int = 0):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.skip = skip

    def __iter__(self):
        yield from itertools.islice(super().__iter__(), self.skip, None)


def build_resumable_train_loader(cfg, mapper=None):
    """``build_detection_train_loader(cfg, mapper)`` with a :class:`ResumableTrainingSampler` when
    ``DATALOADER.SAMPLER_TRAIN`` is "TrainingSampler". Returns (loader, sampler or None); the loader
    also keeps the sampler as ``loader.resumable_sampler`` (for :func:`resume_loader`)."""
    kwargs = _train_loader_from_config(cfg, mapper)
    sampler = None
    if type(kwargs["sampler"]) is TrainingSampler:
        old = kwargs["sampler"]
        sampler = ResumableTrainingSampler(old._size, shuffle=old._shuffle, seed=old._seed)
        kwargs["sampler"] = sampler
    loader = build_detection_train_loader(**kwargs)
    loader.resumable_sampler = sampler
    return loader, sampler


class _KeepTorchRNGOnFirstNext:
    def __init__(self, it):
        self._it, self._first = it, True

    def __iter__(self):
        return self

    def __next__(self):
        if not self._first:
            return next(self._it)
        self._first = False
        state = torch.get_rng_state()
        try:
            return next(self._it)
        finally:
            torch.set_rng_state(state)


class _ResumedLoader:
    """A data loader for a resumed run: iterating it gives the loader's iterator, whose first ``next``
    leaves torch's random state as it was. Starting detectron2's loader draws one torch seed
    (``torch.utils.data.DataLoader`` iterator), which the uninterrupted run drew at iteration 0,
    before the checkpoint; the data mapping itself draws from NumPy, not torch."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return _KeepTorchRNGOnFirstNext(iter(self.loader))

    def __len__(self):
        return len(self.loader)


def resume_loader(data_loader, skip: int):
    """The loader a trainer resumed at ``skip`` images (per rank) should read: its
    :class:`ResumableTrainingSampler` (if any) skips what the run already consumed, and the first batch
    leaves torch's random state untouched. Assign it to the trainer's public ``data_loader`` before
    training starts."""
    sampler = getattr(data_loader, "resumable_sampler", None)
    if sampler is not None:
        sampler.skip = skip
    return _ResumedLoader(data_loader)
