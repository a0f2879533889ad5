"""What both readers of the loader share: the read settings, timestamp choice, the S2 offset convention and
the metadata keys of a batch. Pure functions of numpy arrays and the plan; no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import schema
from ..layout import ChunkSet
from ..timeorder import seasonal_order
from .plan import SALT_TIMESTAMP, rng_for


@dataclass
class ReadSpec:
    """Everything a worker needs to turn planned rows into a batch (picklable, no open handles).

    ``counts[f]`` locations in file ``f`` of ``sets``; ``s2_offset`` is the convention of delivered S2 values
    (True: DN + 1000 as chunk files store them; False: offset removed as shards store them).
    """

    sets: list[ChunkSet]
    counts: list[int]
    modalities: list[str]
    timestamps: str | int | list[int]
    return_metadata: bool
    s2_offset: bool | None
    fix_s1_order: bool
    on_error: str
    seed: int
    epoch: int
    archive_kwargs: dict[str, Any] = field(default_factory=dict)
    mix: int = 1
    reindex_seasonal: bool = False
    prefetch: int = 1
    #: Shards: member lists known before reading (path -> members), read by range; others stream their headers.
    members: dict[str, list[Any]] = field(default_factory=dict)
    #: Where ``counts`` came from, named when a shard holds another count.
    counted: str = "its index"
    #: Timestamps each member holds (SSL4EO-S12: 4 seasons; TerraMesh: 1).
    n_timestamps: int = schema.N_TIMESTAMPS
    #: Remote streams: left-out time chunks of at least this many bytes are stepped over (None: read whole).
    jump: int | None = None
    #: Sets the plan reads at once (their locations taken in turn); a reader keeps that many streams open.
    spread: int = 1
    #: Bytes before a member's first left-out chunk (0: not known): read with a stream's first request.
    first_front: int = 0
    #: Modality -> bytes of one member, as a shard's first member told at construction (a stream's warm-up
    #: reads the first batch's members in one request sized by it).
    member_bytes: dict[str, int] = field(default_factory=dict)
    #: Streams read by parts read the first batch's members whole, in one request per shard (else by parts).
    warm_span: bool = True

    @property
    def single(self) -> bool:
        """One timestamp per location (an index, or ``"random"``): the time axis is dropped."""
        return self.timestamps == "random" or isinstance(self.timestamps, int)

    def random_t(self, f: int) -> np.ndarray:
        """int64 ``[counts[f]]``: the season drawn for each location of file ``f`` this epoch."""
        return rng_for(self.seed, self.epoch, SALT_TIMESTAMP, f).integers(0, self.n_timestamps, self.counts[f])

    def listed(self) -> list[int]:
        """Timestamps asked for when they are "all", an index or a list."""
        if self.timestamps == "all":
            return list(range(self.n_timestamps))
        if isinstance(self.timestamps, int):
            return [self.timestamps]
        if isinstance(self.timestamps, str):
            raise ValueError(f"timestamps={self.timestamps!r} lists no indices")
        return list(self.timestamps)


def by_parts(modality: str, fix_s1_order: bool) -> bool:
    """Whether members of ``modality`` may be read by parts (``ChunkDataset(skip_unused=)``): it has seasons to
    leave out, and its stored timestep of a season is known before reading (S1 data may follow product names in
    files before the fix: with ``fix_s1_order`` the order is learned from the member's times)."""
    mod = schema.find_modality(modality)
    return mod is not None and not mod.static and not (modality == "S1GRD" and fix_s1_order)


def offset_delta(mod: schema.Modality, stored_with_offset: bool, want_offset: bool | None) -> int:
    """What to add to stored values of ``mod`` to deliver them in the asked S2 convention (``None``: as
    stored)."""
    if not mod.offset or want_offset is None or stored_with_offset == want_offset:
        return 0
    return mod.offset if want_offset else -mod.offset


@dataclass
class RowMeta:
    """Facts of one delivered location: ``times[mod]`` int64 ns ``[T_mod]`` in delivered order; ``timestamp``
    is the season drawn with ``timestamps="random"``."""

    sample: str
    file: str
    center_lat: float
    center_lon: float
    crs: int
    times: dict[str, np.ndarray]
    timestamp: int | None = None
    sample_id: str | None = None  # the member's own ``sample`` coordinate (TerraMesh: "<id>_<season>")


def metadata_batch(spec: ReadSpec, rows: Sequence[RowMeta]) -> dict[str, Any]:
    """The metadata keys of a batch (see :class:`~ssl4eo_zarr.loader.ChunkDataset`) from its rows."""
    held = [m for m in spec.modalities if rows and m in rows[0].times]  # a subset's modalities (TerraMesh)
    ref = schema.reference_modality(held or spec.modalities)
    out: dict[str, Any] = {
        "sample": [r.sample for r in rows],
        "file": [r.file for r in rows],
        "center_lat": torch.tensor([r.center_lat for r in rows], dtype=torch.float64),
        "center_lon": torch.tensor([r.center_lon for r in rows], dtype=torch.float64),
        "crs": torch.tensor([r.crs for r in rows], dtype=torch.int64),
    }
    if rows and any(r.sample_id is not None for r in rows):
        own = [schema.season_of(r.sample_id) if r.sample_id is not None else (r.sample, -1) for r in rows]
        out["sample_id"] = [r.sample_id or "" for r in rows]
        out["location"] = [loc for loc, _s in own]
        out["season"] = torch.tensor([season for _l, season in own], dtype=torch.int64)
    if spec.timestamps == "random":
        out["timestamp"] = torch.tensor([r.timestamp for r in rows], dtype=torch.int64)
    for mod in held:
        static = len(rows[0].times[mod]) == 1
        picked = []
        for r in rows:
            t = r.times[mod]
            if static:
                picked.append(t[0] if spec.single else t[:1])
            elif spec.timestamps == "random":
                picked.append(t[r.timestamp])
            elif spec.timestamps == "all":
                picked.append(t)
            else:
                picked.append(t[spec.timestamps])
        key = "time_" if mod == ref else f"time_{mod}"
        out[key] = torch.from_numpy(np.ascontiguousarray(np.stack(picked)).astype(np.int64)) if rows else torch.zeros(0)
    return out


def delivered_shape(spec: ReadSpec, static: bool, n_rows: int, n_t: int, item: Sequence[int]) -> tuple[int, ...]:
    """Batch shape of one modality, one rule for all: one timestamp asked for (an index or ``"random"``) drops
    the time axis, ``[B, *item]``, static modalities (DEM) included; several keep it, ``[B, T, *item]``, where a
    static modality has its single timestep, ``T = 1``."""
    if spec.single:
        return (n_rows, *item)
    return (n_rows, 1 if static else n_t, *item)


__all__ = ["ReadSpec", "RowMeta", "delivered_shape", "metadata_batch", "offset_delta", "seasonal_order"]
