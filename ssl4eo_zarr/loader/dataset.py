"""ChunkDataset: a chunk-aware PyTorch IterableDataset over SSL4EO-S12 v1.1 chunk files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .. import schema
from ..errors import SSL4EOError
from ..layout import ChunkSet, resolve
from ..reader import open_chunk
from .decode import ArchiveCache, Decoded, alloc, decode_set, open_set
from .plan import Batch, _rng, delivery_order, epoch_plan
from .transforms import call_transform, normalize

Timestamps = str | int | Sequence[int]


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ChunkDataset(IterableDataset):
    """Stream batches of SSL4EO-S12 v1.1 chunk files, one chunk (64 locations x 4 seasons) at a time.

    Use with ``DataLoader(ds, batch_size=None, num_workers=N, pin_memory=True)``: the dataset batches
    itself. Files are dealt to ranks (``torch.distributed`` is detected) and then to workers; each worker
    reads the ``bands`` chunks it needs straight from the zip archives and decodes them into shared-memory
    tensors, so handing a batch to the main process copies nothing.

    ==========  =======  =====  ===========================  ===================================
    modality    dtype    bands  stored units                 shape per batch
    ==========  =======  =====  ===========================  ===================================
    S2L1C       int16    13     DN + 1000                    ``[B, T, 13, H, W]``
    S2L2A       int16    12     DN + 1000                    ``[B, T, 12, H, W]``
    S1GRD       float16  2      dB (VV, VH)                  ``[B, T, 2, H, W]``
    S2RGB       uint8    3      display values               ``[B, T, 3, H, W]``
    ==========  =======  =====  ===========================  ===================================

    ``T`` is the number of timestamps asked for; with a single timestamp (``timestamps=2`` or
    ``"random"``) the time axis is dropped: ``[B, C, H, W]``. ``H = W = 264`` unless cropped.
    Multi-timestamp tensors of whole-chunk batches are views of time-major storage (no copy); call
    ``.contiguous()`` if an operation needs it.

    With ``return_metadata=True`` a batch also holds ``sample`` (list of B 7-digit ids), ``file`` (list of
    B file names), ``center_lat``/``center_lon`` float64 ``[B]`` (degrees), ``crs`` int64 ``[B]`` (EPSG),
    ``time_`` int64 ``[B, T]`` or ``[B]`` (ns since 1970, S2 acquisition; ``time_S1GRD`` for S1),
    ``timestamp`` int64 ``[B]`` (season index, with ``"random"``) and ``cloud_mask`` uint8
    ``[B, T, H, W]`` or ``[B, H, W]`` (SEnSeI classes, see :class:`~ssl4eo_zarr.CloudClass`).

    Parameters
    ----------
    root_or_files:
        Dataset root, split folder, a chunk file or a list of chunk files (local or URLs).
    split:
        ``"train"`` or ``"val"`` when given a root.
    modalities:
        Modalities to read (default S2L1C, S2L2A, S1GRD).
    batch_size:
        ``None`` yields whole chunks (64 locations); smaller sizes split chunks without rereading, larger
        ones combine chunks. Partial chunks (< 64 locations) work.
    timestamps:
        ``"all"``, ``"random"`` (one random season per location, the same for all its modalities), an index
        0..3 or a list of indices. Only the chunks needed are read.
    shuffle, seed:
        File order and within-chunk order come from (seed, epoch); call :meth:`set_epoch` each epoch.
    rank, world_size:
        Override the ``torch.distributed`` rank and world size.
    drop_last:
        Drop the files and batches that do not divide evenly instead of padding (each rank always yields
        the same number of batches; without ``drop_last`` at most one file per rank is repeated).
    mix:
        Pool the samples of this many chunks per worker before cutting batches (more diverse batches,
        ``mix`` chunk sets in memory per worker).
    transform:
        Callable on the batch dict, run in the worker (see :mod:`ssl4eo_zarr.loader.transforms`).
    normalize:
        Return float32 standardised with the published statistics instead of native dtypes.
    return_metadata:
        Add the metadata keys listed above.
    on_error:
        ``"raise"`` raises an error naming the damaged file; ``"skip"`` warns, skips the file and goes on
        (skipped files are listed in :attr:`skipped` when iterating in the main process).
    samples_per_file:
        Locations per file if known (skips scanning file metadata at construction). By default the
        published splits (3,812 train / 34 val files) are known to hold 64 each; other file sets are scanned.
    num_workers:
        Worker count used by ``len()`` when ``batch_size`` is set (batches split per worker).
    storage_options, cache_dir:
        fsspec options and an optional local cache folder for remote archives.
    retries, retry_backoff:
        Remote reads that fail transiently are retried ``retries`` times, sleeping ``retry_backoff * 2**k`` s.
    fix_s1_order:
        S1GRD files published before the 2026-02-19 fix hold S1 in product-name order; by default each
        location's S1 timestamps are reordered to follow ``time_`` (so S1 season ``t`` pairs with S2 season
        ``t``), with one :class:`~ssl4eo_zarr.errors.S1OrderWarning` per file. ``False`` delivers them as stored.
    """

    def __init__(
        self,
        root_or_files: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        split: str | None = None,
        modalities: Sequence[str] = schema.DEFAULT_TRAIN_MODALITIES,
        batch_size: int | None = None,
        timestamps: Timestamps = "all",
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        mix: int = 1,
        transform: Callable[..., dict[str, Any]] | None = None,
        normalize: bool = False,
        return_metadata: bool = False,
        on_error: str = "raise",
        samples_per_file: int | Sequence[int] | None = None,
        num_workers: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
        retries: int = 5,
        retry_backoff: float = 0.2,
        fix_s1_order: bool = True,
    ):
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive or None, got {batch_size}")
        self.modalities = [schema.get_modality(m).name for m in modalities]
        self.sets: list[ChunkSet] = resolve(root_or_files, split=split, modalities=self.modalities,
                                            storage_options=storage_options)
        self.batch_size = batch_size
        self.timestamps = self._parse_timestamps(timestamps)
        self.shuffle = shuffle
        self.seed = int(seed)
        dist_rank, dist_world = _distributed()
        self.rank = dist_rank if rank is None else int(rank)
        self.world_size = dist_world if world_size is None else int(world_size)
        self.drop_last = drop_last
        self.mix = max(int(mix), 1)
        self.transform = transform
        self.normalize = normalize
        self.return_metadata = return_metadata
        self.on_error = on_error
        self.num_workers = num_workers
        self.fix_s1_order = fix_s1_order
        self.archive_kwargs = {"storage_options": storage_options, "cache_dir": cache_dir, "retries": retries,
                               "backoff": retry_backoff}
        self.counts = self._sample_counts(samples_per_file)
        self.epoch = 0
        self.skipped: list[str] = []
        self._resume_batches: int | None = None
        self._resume_worker: dict[int, int] = {}
        self._yielded: dict[int, int] = {}

    # -- setup -----------------------------------------------------------------------------------------
    @staticmethod
    def _parse_timestamps(ts: Timestamps) -> str | list[int]:
        if isinstance(ts, str):
            if ts not in ("all", "random"):
                raise ValueError(f"timestamps must be 'all', 'random', an index or a list, got {ts!r}")
            return ts
        items = [int(ts)] if isinstance(ts, int | np.integer) else [int(t) for t in ts]
        if not items or any(not 0 <= t < schema.N_TIMESTAMPS for t in items):
            raise ValueError(f"timestamp indices must be in 0..{schema.N_TIMESTAMPS - 1}, got {ts!r}")
        return items if not isinstance(ts, int | np.integer) else items[0]

    def _sample_counts(self, given: int | Sequence[int] | None) -> list[int]:
        n = len(self.sets)
        if isinstance(given, int):
            return [given] * n
        if given is not None:
            if len(given) != n:
                raise ValueError(f"samples_per_file lists {len(given)} counts for {n} files")
            return [int(c) for c in given]
        splits = {cs.split for cs in self.sets}
        if len(splits) == 1 and (split := splits.pop()) in schema.SPLITS and n == schema.SPLITS[split] and all(
            schema.parse_chunk_file_name(cs.name) for cs in self.sets
        ):
            return [schema.SAMPLES_PER_FILE] * n  # the published files hold exactly 64 locations each
        first = self.modalities[0]

        def count(cs: ChunkSet) -> int:
            try:
                return open_chunk(cs.paths[first], **self.archive_kwargs).n_samples
            except SSL4EOError:
                if self.on_error == "raise":
                    raise
                return schema.SAMPLES_PER_FILE  # the worker skips it and reports the error then

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(count, self.sets))

    # -- epochs, length, resume ------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: a new file and sample order (same seed -> same order)."""
        if epoch != self.epoch:
            self._resume_batches = None
            self._resume_worker = {}
            self._yielded = {}
        self.epoch = int(epoch)

    def _plan(self, num_workers: int) -> list[list[Batch]]:
        return epoch_plan(self.counts, seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size,
                          num_workers=num_workers, batch_size=self.batch_size, mix=self.mix, shuffle=self.shuffle,
                          drop_last=self.drop_last)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (with ``num_workers`` workers when ``batch_size`` is set)."""
        return sum(len(w) for w in self._plan(self.num_workers or 1))

    def state_dict(self, batches: int | None = None) -> dict[str, Any]:
        """Position in the epoch.

        Inside a DataLoader worker (as torchdata's StatefulDataLoader calls it) the state is that worker's.
        In the main process it is the number of batches consumed this epoch: counted automatically when
        iterating the dataset directly, or given as ``batches`` when a DataLoader with workers delivered them.
        """
        info = get_worker_info()
        state: dict[str, Any] = {"epoch": self.epoch, "seed": self.seed, "rank": self.rank,
                                 "world_size": self.world_size}
        if info is not None:
            state.update(worker=info.id, yielded=self._yielded.get(info.id, 0))
        else:
            state["batches"] = int(batches if batches is not None else sum(self._yielded.values()))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the next iteration skips what was consumed without reading it."""
        if state.get("seed", self.seed) != self.seed or state.get("world_size", self.world_size) != self.world_size:
            raise ValueError("state was saved with another seed or world size; the order would differ")
        self.epoch = int(state["epoch"])
        if "worker" in state:
            self._resume_worker = {int(state["worker"]): int(state["yielded"])}
            self._yielded = dict(self._resume_worker)
        else:
            self._resume_batches = int(state["batches"])
            self._yielded = {}

    # -- iteration -------------------------------------------------------------------------------------
    def _my_batches(self, worker: int, num_workers: int) -> tuple[list[Batch], int]:
        """(batches this worker yields, how many of the epoch were consumed before them)."""
        plan = self._plan(num_workers)
        if worker in self._resume_worker:  # per-worker state (torchdata's StatefulDataLoader)
            skip = self._resume_worker.pop(worker)
            return plan[worker][skip:], skip
        if not self._resume_batches:
            return plan[worker], 0
        # Rebuild the order in which a DataLoader delivered the epoch, drop what was consumed and deal the rest
        # round-robin again, so the resumed DataLoader delivers exactly the batches that would have come next.
        taken = [0] * len(plan)
        sequence = []
        for w in delivery_order([len(p) for p in plan]):
            sequence.append(plan[w][taken[w]])
            taken[w] += 1
        consumed = self._resume_batches
        return sequence[consumed:][worker::num_workers], consumed

    def _random_t(self, file_index: int, n: int) -> np.ndarray:
        return _rng(self.seed, self.epoch, 7919, file_index).integers(0, schema.N_TIMESTAMPS, n)

    def _decode(self, f: int, cache: ArchiveCache, shared: bool) -> Decoded:
        if self.timestamps == "all":
            ts = list(range(schema.N_TIMESTAMPS))
        elif self.timestamps == "random":
            ts = sorted(set(self._random_t(f, self.counts[f]).tolist()))
        elif isinstance(self.timestamps, int):
            ts = [self.timestamps]
        else:
            ts = list(self.timestamps)
        files = open_set(self.sets[f].paths, cache)
        perm = cache.s1_permutation(files["S1GRD"]) if self.fix_s1_order and "S1GRD" in files else None
        dec = decode_set(files, ts, shared=shared, with_cloud=self.return_metadata, with_meta=self.return_metadata,
                         scratch=cache.scratch, s1_perm=perm)
        dec.meta["_ts"] = np.asarray(ts)
        return dec

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shared = info is not None
        mine, consumed = self._my_batches(worker, num_workers)
        if info is None:
            self._resume_batches = None
        last_use: dict[int, int] = {}
        for bi, batch in enumerate(mine):
            for f in batch.files:
                last_use[f] = bi
        cache = ArchiveCache(capacity=max(4, 2 * self.mix), archive_kwargs=self.archive_kwargs)
        decoded: dict[int, Decoded | None] = {}
        self._yielded[worker] = consumed
        for bi, batch in enumerate(mine):
            for f in batch.files:
                if f not in decoded:
                    decoded[f] = self._decode_or_skip(f, cache, shared)
            rows = [(f, i) for f, i in batch.rows if decoded[f] is not None]
            if rows:
                out = self._assemble(batch, rows, decoded, shared)
                if self.transform is not None:
                    # Seeded by the batch's identity, not its position, so a resumed epoch augments identically.
                    f0, i0 = batch.rows[0]
                    gen = torch.Generator().manual_seed(
                        int(_rng(self.seed, self.epoch, self.rank, f0, i0, len(batch.rows)).integers(0, 2**62)))
                    out = call_transform(self.transform, out, gen)
                if self.normalize:
                    out = normalize(out)
                self._yielded[worker] = consumed + bi + 1
                yield out
                del out  # the consumer owns the batch now; holding it would double the worker's memory
            for f in batch.files:
                if last_use[f] == bi:
                    decoded.pop(f, None)
                    for p in self.sets[f].paths.values():
                        cache.drop(p)

    def _decode_or_skip(self, f: int, cache: ArchiveCache, shared: bool) -> Decoded | None:
        try:
            return self._decode(f, cache, shared)
        except SSL4EOError as exc:
            if self.on_error == "raise":
                raise
            warnings.warn(f"skipping chunk {self.sets[f].name}: {exc}", RuntimeWarning, stacklevel=2)
            self.skipped.append(str(exc))
            return None

    def _assemble(self, batch: Batch, rows: list[tuple[int, int]], decoded: Mapping[int, Decoded | None],
                  shared: bool) -> dict[str, Any]:
        random_t = self.timestamps == "random"
        single = random_t or isinstance(self.timestamps, int)
        picks = {f: self._random_t(f, self.counts[f]) for f, _ in rows} if random_t else {}
        out: dict[str, Any] = {}
        keys = list(self.modalities) + (["cloud_mask"] if self.return_metadata else [])
        for key in keys:
            if batch.whole_file is not None and not random_t and len(rows) == len(batch.rows):
                src = decoded[batch.whole_file]
                t = src.images[key] if key != "cloud_mask" else src.cloud
                if t is None:
                    continue
                out[key] = t[0] if single else t.transpose(0, 1)  # zero-copy view of time-major storage
                continue
            first = decoded[rows[0][0]]
            proto = first.images[key] if key != "cloud_mask" else first.cloud
            if proto is None:
                continue
            n_t = 1 if single else proto.shape[0]
            shape = (len(rows), *proto.shape[2:]) if single else (len(rows), n_t, *proto.shape[2:])
            dst = alloc(shape, proto.numpy().dtype, shared=shared)
            for j, (f, i) in enumerate(rows):
                dec = decoded[f]
                src = dec.images[key] if key != "cloud_mask" else dec.cloud
                if random_t:
                    k = int(np.searchsorted(dec.meta["_ts"], picks[f][i]))
                    dst[j].copy_(src[k, i])
                elif single:
                    dst[j].copy_(src[0, i])
                else:
                    dst[j].copy_(src[:, i])
            out[key] = dst
        if self.return_metadata:
            out.update(self._metadata(rows, decoded, picks, single))
        return out

    def _metadata(self, rows, decoded, picks, single) -> dict[str, Any]:
        def col(name: str) -> np.ndarray:
            return np.stack([decoded[f].meta[name][i] for f, i in rows])

        meta: dict[str, Any] = {
            "sample": [str(decoded[f].meta["sample"][i]) for f, i in rows],
            "file": [self.sets[f].name for f, _ in rows],
            "center_lat": torch.from_numpy(col("center_lat").astype(np.float64)),
            "center_lon": torch.from_numpy(col("center_lon").astype(np.float64)),
            "crs": torch.from_numpy(col("crs").astype(np.int64)),
        }
        ref = schema.reference_modality(self.modalities)
        if picks:
            chosen = np.array([picks[f][i] for f, i in rows], dtype=np.int64)
            meta["timestamp"] = torch.from_numpy(chosen)
        for mod in self.modalities:
            times = col(f"time_{mod}")
            if picks:
                times = times[np.arange(len(rows)), chosen]
            elif self.timestamps != "all":  # an index or a list of indices
                times = times[:, self.timestamps]
            key = "time_" if mod == ref else f"time_{mod}"
            meta[key] = torch.from_numpy(np.ascontiguousarray(times))
        return meta
