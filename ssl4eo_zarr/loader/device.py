"""Batches onto the GPU straight from the workers' reused arenas.

``DataLoader(pin_memory=True)`` copies every batch out of the workers' shared memory into pinned memory before
it can travel to the GPU: on an H100 machine that copy cost the consuming process ~0.2 CPU s per full-size
batch. :class:`DeviceFeeder` instead page-locks each arena where it is, once (``cudaHostRegister``; arenas
are reused, so this happens a few times per worker, not per batch), copies asynchronously from it, and holds
the batch until the copy has finished, so the arena goes back to its worker only then.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import torch

from .pool import pin_in_place, release_ended_workers
from .transforms import normalize as _normalize


class DeviceFeeder:
    """``feeder(batch)`` -> the batch on ``device`` (tensors moved, everything else as it was).

    Use with ``DataLoader(..., pin_memory=False)``::

        feed = DeviceFeeder("cuda", normalize=True)
        for batch in loader:
            x = feed(batch)["S2L2A"]  # float32 [B, T, C, H, W] on the GPU, standardised there

    Parameters
    ----------
    device:
        Target device. On CUDA, batches that live in a worker's reused arena are copied from it directly
        (page-locked in place); others (fresh memory, 0 workers) are copied as usual.
    normalize:
        Standardise with the published statistics on the device (:func:`~ssl4eo_zarr.loader.normalize`),
        float32 ``(x - mean) / std``; ``s2_offset`` and ``layout`` as there.
    """

    def __init__(self, device: torch.device | str = "cuda", *, normalize: bool = False, s2_offset: bool | None = True,
                 layout: str = "BTCHW"):
        self.device = torch.device(device)
        self.normalize = normalize
        self.s2_offset = s2_offset
        self.layout = layout
        self._in_flight: deque[tuple[Any, Mapping[str, Any]]] = deque()

    def _drain(self, wait: bool = False) -> None:
        while self._in_flight and (wait or self._in_flight[0][0].query()):
            event, _batch = self._in_flight.popleft()
            if wait:
                event.synchronize()

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        if cuda:
            self._drain()
        pinned = cuda and pin_in_place(batch)
        out = {k: v.to(self.device, non_blocking=cuda) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if pinned:  # the arena must outlive the asynchronous copies from it
            # The copies were queued on the target device's current stream, whichever device is current here.
            with torch.cuda.device(self.device):
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self.device))
            self._in_flight.append((event, batch))
        if self.normalize:
            out = _normalize(out, s2_offset=self.s2_offset, layout=self.layout)
        return out

    def synchronize(self) -> None:
        """Wait for every copy in flight and let go of the batches they read; arenas of workers that have
        ended are unpinned and let go (call it at the end of an epoch when workers are not persistent)."""
        self._drain(wait=True)
        if self.device.type == "cuda":
            release_ended_workers()


__all__ = ["DeviceFeeder"]
