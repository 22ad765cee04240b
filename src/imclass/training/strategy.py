"""How a fine-tuning run uses its processes: one (:class:`Single`, the default) or several
(``imclass.distributed.ddp.DDP``, data parallel). The loop and the callbacks stay the same; a strategy says
where the model runs, which samples this process sees, what to add to the callbacks, and how numbers computed
by every process become one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .loop import Callback


class Single:
    """One process: all samples, nothing to synchronise. ``rank`` 0 of a ``world`` of 1."""

    rank = 0
    world = 1

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints and the bundle, and reports progress."""
        return self.rank == 0

    def device(self, requested: str) -> str:
        from ..engine.backends import resolve_device

        return resolve_device(requested)

    def threads(self) -> int:
        """CPU threads for this process's model (all usable cores for one process)."""
        from ..engine.backends import default_threads

        return default_threads()

    def loader(self, rows, batch_size: int, seed: int, workers: int) -> Iterable[Any]:
        """This process's shuffled batches of ``rows`` for one epoch (``seed``: the epoch's seed)."""
        return loader(rows, batch_size, True, seed, workers)

    def callbacks(self) -> list[Callback]:
        """Callbacks the strategy adds to the run (wrapping the model, reducing metrics, syncing a resume)."""
        return []

    def map_rows(self, items: Sequence[Any], fn: Callable[[list[Any]], np.ndarray]) -> np.ndarray:
        """``fn(items)`` (one row per item); a parallel strategy splits ``items`` across its processes and
        gathers the rows back in order, on every process."""
        return fn(list(items))

    def finish(self) -> None:
        """The fit is over: release what the strategy holds (process groups)."""
        return None


SINGLE = Single()


def collate(batch):
    """A batch of ``(image, target, index)`` rows; unreadable images (None) are dropped, None if none is left."""
    from torch.utils.data import default_collate

    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


def loader(rows, batch_size: int, shuffle: bool, seed: int, workers: int, sampler=None):
    """A ``DataLoader`` over ``rows`` (shuffled from ``seed``, or in ``sampler``'s order) with :func:`collate`."""
    import torch
    from torch.utils.data import DataLoader

    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=workers, collate_fn=collate, generator=gen, drop_last=False,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())
