"""ChunkDataset: a chunk-aware PyTorch IterableDataset over SSL4EO-S12 v1.1, chunk files or WebDataset shards."""

from __future__ import annotations

import dataclasses
import os
import tarfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .. import schema
from ..chunkfile import open_chunk
from ..errors import DamagedShardError, ModalityMismatchError, SSL4EOError
from ..layout import SHARDS, ChunkSet, named_modalities, resolve
from ..shardfile import shard_index
from ..shardindex import WALK_WORKERS, counts_from_index, known_counts, load_index, read_root_table, shards_for_ids, walk
from ..storage import is_url
from ..storage.cache import check_cache_options
from .chunk_reader import ChunkReader
from .common import ReadSpec, by_parts
from .plan import SALT_AUGMENT, Batch, delivery_order, epoch_length, epoch_plan, rng_for
from .pool import MAX_WORKERS, LeasedBatch, lease_table, worker_pool
from .shard_reader import ShardReader
from .transforms import call_transform
from .transforms import normalize as normalize_batch

Timestamps = str | int | Sequence[int]
#: Shards a worker reads at once (see ``ChunkDataset.spread``). A remote shard's stream is bound by its link
#: (a round trip per member read by parts, the rate of one response whole), so a worker moves as many members
#: as it has streams: 8 against 4 doubled a worker's locations/s at 50 ms and 50 MB/s, and its first batch
#: came 0.55 x as soon (fewer members from each stream); 16 doubled the rate again but the first batch came later.
SPREAD = 8


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ChunkDataset(IterableDataset):
    """Stream batches of SSL4EO-S12 v1.1 from either distribution: chunk files (64 locations x 4 seasons each)
    or WebDataset tar shards (512 locations each, seven modalities), locally or from a URL.

    Use with ``DataLoader(ds, batch_size=None, num_workers=N)`` (to CUDA through
    :class:`~ssl4eo_zarr.loader.DeviceFeeder`, not ``pin_memory=True``: see docs/loader.md): the dataset batches
    itself. Files (chunk files or shards) are dealt to ranks (``torch.distributed`` is detected) and then to
    workers; each worker reads what it needs straight from the zip archives (inside the tar for shards) and
    decodes it with numcodecs into shared-memory tensors, so handing a batch to the main process copies nothing.
    Shards are streamed front to back once per epoch through a bounded shuffle buffer (never downloaded whole).
    Batches have the same keys, shapes and dtypes from both distributions.

    ==========  =======  =====  ===========================  ===================================
    modality    dtype    bands  stored units                 shape per batch
    ==========  =======  =====  ===========================  ===================================
    S2L1C       int16    13     DN + 1000                    ``[B, T, 13, H, W]``
    S2L2A       int16    12     DN + 1000                    ``[B, T, 12, H, W]``
    S1GRD       float16  2      dB (VV, VH)                  ``[B, T, 2, H, W]``
    S2RGB       uint8    3      display values               ``[B, T, 3, H, W]``
    NDVI        float32  1      NDVI (shards only)           ``[B, T, 1, H, W]``
    LULC        uint8    1      ESRI class (shards only)     ``[B, T, 1, H, W]``
    DEM         float32  1      metres (shards only)         ``[B, 1, 1, H, W]`` (one timestep: ``T = 1``)
    ==========  =======  =====  ===========================  ===================================

    S2 values follow one convention whichever the distribution: ``s2_offset=True`` (default) delivers DN + 1000
    as chunk files store them (reflectance = (DN - 1000) / 10000); ``False`` removes the offset, as shards
    store them. A modality this library does not know (the dataset grew one) reads from shards with the dtype,
    bands and time length of its own members. DEM/NDVI/LULC dtypes are those of the members (not published).

    One shape rule for every modality (the table in docs/loader.md): ``T`` is the number of timestamps asked
    for (1 for a static modality such as DEM); with a single timestamp (``timestamps=2`` or ``"random"``) the
    time axis is dropped for every modality, DEM included: ``[B, C, H, W]``. ``H = W = 264`` unless cropped.
    Multi-timestamp tensors of whole-chunk batches are views of time-major storage (no copy); call
    ``.contiguous()`` if an operation needs it.

    With ``return_metadata=True`` a batch also holds ``sample`` (list of B 7-digit ids), ``file`` (list of
    B file names), ``center_lat``/``center_lon`` float64 ``[B]`` (degrees), ``crs`` int64 ``[B]`` (EPSG),
    ``time_`` int64 ``[B, T]`` or ``[B]`` (ns since 1970, S2 acquisition; ``time_S1GRD`` for S1),
    ``timestamp`` int64 ``[B]`` (season index, with ``"random"``) and ``cloud_mask`` uint8
    ``[B, T, H, W]`` or ``[B, H, W]`` (SEnSeI classes, see :class:`~ssl4eo_zarr.CloudClass`). TerraMesh
    batches add ``dataset``, ``subset`` and, from each member's own ``sample`` coordinate, ``sample_id`` (list
    of B, e.g. ``0194630_1``), ``location`` (list of B, ``0194630``) and ``season`` int64 ``[B]`` (-1 for a
    Major TOM sample); their ``sample`` holds member keys (``ssl4eos12_val_0080385``).

    Parameters
    ----------
    root_or_files:
        Dataset root (either distribution, detected), split folder, a chunk file or shard, a list of them, or a
        brace pattern as the published loader takes (``ROOT/val/S2L2A/ssl4eos12_shard_{000001..000005}.tar``;
        the other modalities are found in the sibling folders), or the published TerraMesh loader's ``urls``
        (``ROOT/val/[S2L2A,DEM]/majortom_shard_{000001..000008}.tar::ROOT/val/[S2L2A,DEM]/ssl4eos12_shard_000009.tar``:
        ``::`` joins the subsets, ``[...]`` names the modalities). Local paths or URLs (``https://``, ``s3://``,
        ``hf://``); a static host that lists no folders works.
    split:
        ``"train"`` or ``"val"`` when given a root.
    modalities:
        Modalities to read (default: those the published loader's ``urls`` name, ``ROOT/val/[S2L2A,DEM]/...``,
        else S2L1C, S2L2A, S1GRD).
    batch_size:
        ``None`` yields whole chunks (64 locations; 64 locations from shards); smaller sizes split chunks
        without rereading, larger ones combine chunks. Partial chunks (< 64 locations) work.
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
        ``mix`` chunk sets in memory per worker). Over shards it sizes the default shuffle buffer.
    shuffle_buffer:
        Shards only: locations held (compressed) in each worker's shuffle buffer; default ``64 * mix``.
        Shard order comes from (seed, epoch), location order from this buffer.
    subsets:
        TerraMesh (a root of ``majortom_shard_*`` and ``ssl4eos12_shard_*`` shards, found by their names): the
        subsets to read, default both. Each batch comes from one subset and holds the modalities that subset
        has (S1GRD only in ``ssl4eos12``, S1RTC only in ``majortom``: asking for both gives every location the
        one it has, never a stand-in); a modality no selected subset holds is an error. Batches carry
        ``dataset`` (``"terramesh"``) and ``subset`` (str) keys, and :func:`~ssl4eo_zarr.loader.normalize` uses
        TerraMesh's own statistics for them. Members hold one timestamp (the shape rule: ``[B, 1, C, H, W]``,
        or ``[B, C, H, W]`` with ``timestamps=0``).
    probs:
        TerraMesh: instead of every location once per epoch (the default, batches of both subsets interleaved
        as they are read), draw each batch's subset with these probabilities, as the published loader's
        ``RandomMix`` does (``{"majortom": 0.8, "ssl4eos12": 0.2}``, or a list in that order); a subset that
        runs out starts over, so the epoch keeps its length and the mixture.
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
    storage_options:
        Credentials and options for URLs (``{"headers": {...}}`` for plain HTTP(S); fsspec options otherwise).
    cache_dir, cache_limit:
        Keep what is read from a URL in this folder (:class:`~ssl4eo_zarr.storage.ByteCache`): shard members and
        chunk-file chunks, CRC-checked when reused, so the second epoch reads from local disk. Workers and ranks
        of a node may share one folder. ``cache_limit`` (``"200GB"``) evicts the least recently used entries
        beyond that many bytes. Refused for local sources (there is nothing to cache).
    prefetch:
        Remote chunk files: each worker fetches the members of this many chunk sets ahead on a background
        thread (all of a set's needed chunks at once, at most 8 requests in flight) while it decodes the
        current one. Fetched bytes land in memory the worker keeps for reuse: ``prefetch + 1`` buffers of one
        set's compressed chunks (about 0.6 GB for full-size S2L1C + S2L2A + S1GRD with four timestamps).
        0 reads on demand. Local files ignore it; members in ``cache_dir`` are read from there instead.
    retries, retry_backoff:
        Remote reads that fail transiently are retried ``retries`` times, sleeping ``retry_backoff * 2**k`` s.
    s2_offset:
        ``True`` (default for SSL4EO-S12): S2L1C/S2L2A as DN + 1000 (chunk-file convention); ``False``: offset
        removed (shard convention). Applies to both distributions, so the same locations give identical tensors
        from either. TerraMesh values are delivered as its members store them, as its published loader does
        (its S2 carries the offset already); ``s2_offset`` must then be left unset.
    samples:
        Only these locations (7-digit ids; or a table with a ``sample`` column or index such as
        :func:`ssl4eo_zarr.read_metadata` returns, e.g. filtered by cloud fraction or bounding box). TerraMesh:
        member keys, or SSL4EO-S12 ids (each its four one-season members; ``<id>_<season>`` one), found through
        the members' own ``sample`` coordinates (read by range once, then kept); an id in no member is an error. Chunk files
        are opened once at construction to find them; of shards only those that hold one are indexed (the
        ``index`` file, else the root's metadata table's ``tar`` column names them; else every shard's headers
        are walked, 32 shards at once), and workers read just the wanted members, by range. Nothing is decoded.
    index:
        Shards: an index file of the source (``ssl4eo-zarr index``, local path or URL): counts and member
        places come from it, no tar header is read; a shard that changed since is refused
        (:class:`~ssl4eo_zarr.shardindex.StaleIndexError`). Without it the published shards' counts come from the
        published totals (SSL4EO-S12 and TerraMesh) and are checked as each shard streams.
    reindex_seasonal:
        Order each location's timestamps by month of year instead of date (the published loader's option),
        following the reference S2 modality's acquisition times; index/list ``timestamps`` refer to that order.
    distribution:
        ``"chunks"`` or ``"shards"`` where a root holds both (default: detected).
    buffer_slots:
        Reused shared-memory arenas per worker (each holds one batch; 0 turns reuse off). A batch's arena is
        reused only after the consuming process has dropped every tensor of it (at any depth of the dicts,
        lists and tuples a transform returns) and everything that shares its memory (views, ``detach()``,
        ``numpy()`` arrays, storages), so nothing you keep is ever overwritten; when
        all arenas are held the worker waits briefly for one coming back (bounded by twice the time since its
        previous batch) and otherwise allocates fresh memory, never blocking for long. Arenas are made as
        needed: a worker whose arenas are out with batches waits for one to come back rather than make
        another, while its waiting stays below what making one costs (a consumer that keeps up leaves a
        worker one arena; see :mod:`ssl4eo_zarr.loader.pool`). The default suits the DataLoader's default
        ``prefetch_factor=2``; with a larger one, raise this to match.
        Batches arrive as :class:`~ssl4eo_zarr.loader.pool.LeasedBatch`, a ``dict``.
    skip_unused:
        Shards streamed from a URL without ``cache_dir``, one timestamp or a few asked for: the band chunks of
        the other timestamps (and cloud masks not returned) are left on the host, each S2 member read by parts
        in bounded requests (one per member, two when a wanted chunk lies behind one left out; see
        :mod:`ssl4eo_zarr.memberparts`) instead of one GET per shard. ``None`` (default): where the link makes
        that faster, measured at construction (at most 17 requests and 9 MB, once per host): the chunks left out
        must take longer at one response's rate than the added round trips (at 50 ms and 50 MB/s, full-size
        SSL4EO-S12 S2 with ``timestamps=0`` is read by parts, with ``"random"`` whole). The first batch's
        members then come whole in one request per shard and modality where the link makes that cheap (at 50 ms
        and 50 MB/s per response; not where the host caps what all responses get together, as a home link does).
        ``True``: always, the first batch too (fewest bytes, for a metered or slow link). ``False``: whole
        members. The attributes ``jump`` and ``warm_span`` say what was chosen (``jump`` ``None``: whole).
    prepare_next_epoch:
        With persistent workers, a worker that has delivered its epoch reads the first batch of the next one
        before it tells the DataLoader it is done, so the next epoch starts with a batch ready instead of
        waiting for a whole chunk set. While a training step works through the batches still queued, that
        read costs nothing; when the loader is the bottleneck it moves one batch's decode from the start of
        the next epoch to the end of this one. The next epoch is predicted from the last two a worker process
        served (``set_epoch(epoch)`` every epoch: ``epoch + 1``; never calling it: the same epoch again), so
        reading ahead starts with a process's second epoch, and worker processes that serve one epoch only
        (``persistent_workers=False``) never do it; another epoch or a resumed state drops the prepared batch.
        :attr:`read_ahead` counts what was used and dropped. Costs one batch decoded for nothing per worker
        after the last epoch. ``None`` (default): on for local files, off for URLs (there that batch would
        also be downloaded for nothing); ``True`` / ``False`` force it.
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
        modalities: Sequence[str] | None = None,
        batch_size: int | None = None,
        timestamps: Timestamps = "all",
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        mix: int = 1,
        shuffle_buffer: int | None = None,
        subsets: Sequence[str] | None = None,
        probs: Mapping[str, float] | Sequence[float] | None = None,
        transform: Callable[..., dict[str, Any]] | None = None,
        normalize: bool = False,
        return_metadata: bool = False,
        on_error: str = "raise",
        samples_per_file: int | Sequence[int] | None = None,
        num_workers: int | None = None,
        s2_offset: bool | None = None,
        samples: Any = None,
        reindex_seasonal: bool = False,
        distribution: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
        cache_limit: int | str | None = None,
        retries: int = 5,
        retry_backoff: float = 0.2,
        fix_s1_order: bool = True,
        buffer_slots: int = 2,
        skip_unused: bool | None = None,
        prefetch: int = 1,
        prepare_next_epoch: bool | None = None,
        index: str | os.PathLike | None = None,
    ):
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive or None, got {batch_size}")
        check_cache_options(root_or_files, cache_dir, cache_limit)
        if modalities is None:  # the published loader's urls may name them (/[S2L2A,DEM]/)
            modalities = named_modalities(root_or_files) or schema.DEFAULT_TRAIN_MODALITIES
        self.modalities = [schema.modality_name(m) for m in modalities]
        self.sets: list[ChunkSet] = resolve(root_or_files, split=split, modalities=self.modalities,
                                            storage_options=storage_options, distribution=distribution,
                                            subsets=subsets)
        absent = [m for m in self.modalities if not any(m in cs.paths for cs in self.sets)]
        if absent:
            held = {cs.subset: sorted(cs.paths) for cs in self.sets}
            raise ValueError(f"no selected subset holds {absent} (subsets: {held}); choose other modalities or "
                             "subsets")
        self.corpus = schema.get_corpus(self.sets[0].corpus)
        names = [s.prefix for s in self.corpus.subsets]
        found = sorted({cs.subset or "" for cs in self.sets}, key=lambda p: names.index(p) if p in names else 99)
        self.groups = [found.index(cs.subset or "") for cs in self.sets] if len(found) > 1 or probs else None
        self.probs = _probs(probs, found) if probs is not None else None
        kinds = {cs.kind for cs in self.sets}
        if len(kinds) != 1:
            raise ValueError("give chunk files or shards, not both")
        self.kind = kinds.pop()
        unknown = [m for m in self.modalities if schema.find_modality(m) is None]
        if unknown and self.kind != SHARDS:
            raise ValueError(f"unknown modality {unknown}; chunk files hold {', '.join(schema.CHUNK_MODALITIES)}")
        self.mix = max(int(mix), 1)
        self.streaming = self.kind == SHARDS
        self.batch_size = batch_size if batch_size is not None or not self.streaming else schema.SAMPLES_PER_FILE
        self.shuffle_buffer = int(shuffle_buffer) if shuffle_buffer else schema.SAMPLES_PER_FILE * self.mix
        self.timestamps = self._parse_timestamps(timestamps, self.corpus.timestamps, self.corpus.name)
        self.shuffle = shuffle
        self.seed = int(seed)
        dist_rank, dist_world = _distributed()
        self.rank = dist_rank if rank is None else int(rank)
        self.world_size = dist_world if world_size is None else int(world_size)
        self.drop_last = drop_last
        self.transform = transform
        self.normalize = normalize
        self.return_metadata = return_metadata
        self.on_error = on_error
        self.num_workers = num_workers
        self.s2_offset = schema.s2_convention(self.corpus, s2_offset)
        self.reindex_seasonal = bool(reindex_seasonal)
        self.fix_s1_order = fix_s1_order
        self.archive_kwargs: dict[str, Any] = {"storage_options": storage_options, "cache_dir": cache_dir,
                                               "cache_limit": cache_limit,
                                               "retries": retries, "backoff": retry_backoff}
        self.prefetch = max(int(prefetch), 0)
        self.prepare_next_epoch = (not any(is_url(p) for cs in self.sets for p in cs.paths.values())
                                   if prepare_next_epoch is None else bool(prepare_next_epoch))
        # Read-ahead batches used and dropped, a row per worker id (each writes its own; see `read_ahead`).
        self._read_ahead = torch.zeros((MAX_WORKERS, 2), dtype=torch.int64).share_memory_()
        self.rows: list[list[int]] | None = None
        self.buffer_slots = max(int(buffer_slots), 0)
        # Made here, before the DataLoader starts its workers, so that they and the main process share it.
        self._leases = lease_table(self.buffer_slots) if self.buffer_slots else None
        self.skipped: list[str] = []
        self.index = os.fspath(index) if index is not None else None
        #: Where counts come from when not from the shards themselves (named when a shard disagrees).
        self._counted = "its index"
        #: Member lists of the shards a selection reads (by range, no header walk in the workers).
        self.members: dict[str, list[Any]] = {}
        self.counts = self._sample_counts(samples_per_file, samples)
        #: Bytes a member read by parts holds before its first left-out chunk, as the first member of the first
        #: shard told at construction (0: not known); a stream's opening request reads that far.
        self.first_front = 0
        #: Modality -> bytes of the first member of its first remote shard (sizes a stream's warm-up request).
        self.member_bytes: dict[str, int] = {}
        #: Streams read by parts read their first batch's members whole, in one request per shard and modality
        #: (where the link makes that cheap enough, see :func:`~ssl4eo_zarr.memberparts.warm_span`), instead of
        #: one request per member.
        self.warm_span = True
        self.jump = self._jump(skip_unused, cache_dir)
        if self.streaming and cache_dir is None and not self.member_bytes:  # not measured with the link
            first = self._first_remote(self.modalities)
            if first is not None:
                self._measure_member_bytes(first[0])
        #: Shards are read SPREAD at a time by each worker, their locations in turn: the shuffle buffer fills from
        #: several shards at once (remote ones each on a read-ahead thread of its own, so their responses move at
        #: once). The same plan wherever the shards lie.
        self.spread = SPREAD if self.streaming else 1
        # Shared memory, so that persistent DataLoader workers (which keep their own copy of the dataset) see
        # the epoch set in the main process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._resume_batches: int | None = None
        self._resume_worker: dict[int, int] = {}
        self._yielded: dict[int, int] = {}
        # In a worker's own copy of the dataset: the next epoch's first batch read ahead, and the last two epochs
        # it served (the next one is predicted from them; see `_prepare_next`).
        self._prepared: _Prepared | None = None
        self._served: list[int] = []

    # -- setup -----------------------------------------------------------------------------------------
    @staticmethod
    def _parse_timestamps(ts: Timestamps, n: int = schema.N_TIMESTAMPS,
                          corpus: str = schema.SSL4EO_S12.name) -> str | int | list[int]:
        """``ts`` checked against the ``n`` timestamps each member of ``corpus`` holds (a TerraMesh member holds
        one: only index 0 exists, and ``"random"`` always draws it)."""
        if isinstance(ts, str):
            if ts not in ("all", "random"):
                raise ValueError(f"timestamps must be 'all', 'random', an index or a list, got {ts!r}")
            return ts
        items = [int(ts)] if isinstance(ts, int | np.integer) else [int(t) for t in ts]
        if not items or any(not 0 <= t < n for t in items):
            held = f"{corpus} members hold {n} timestamp{'s' if n > 1 else ''}: " if n != schema.N_TIMESTAMPS else ""
            raise ValueError(f"{held}timestamp indices must be in 0..{n - 1}, got {ts!r}")
        return items if not isinstance(ts, int | np.integer) else items[0]

    def _first_remote(self, among: Sequence[str]) -> tuple[ChunkSet, str] | None:
        """The first set the epoch reads (a selection's, not the split's first) with a remote shard of one of
        ``among``, and that modality."""
        return next(((cs, m) for cs, n in zip(self.sets, self.counts, strict=True) if n
                     for m in among if is_url(cs.paths.get(m, ""))), None)

    def _measure_member_bytes(self, cs: ChunkSet, skip: str | None = None) -> None:
        """``member_bytes`` of each modality but ``skip`` from the first tar header of its shard in ``cs`` (one
        small request each, at once): a stream asks for the first batch's members in its first request, not in an
        open-ended one that has the host push more into the socket while the first batch waits for the link."""
        from ..memberparts import first_member_bytes
        from ..shardfile import open_binary

        def one(path: str) -> int | None:
            try:
                with open_binary(path, front=tarfile.BLOCKSIZE, **self.archive_kwargs) as fh:
                    return first_member_bytes(fh)
            except OSError:  # a hint only: without it a stream asks for its whole shard at once
                return None

        todo = []
        for m in self.modalities:
            path = cs.paths.get(m, "")
            if m == skip or not is_url(path):
                continue
            if path in self.members:  # members found beforehand: read by range, their sizes known
                if self.members[path]:
                    self.member_bytes[m] = int(self.members[path][0].size)
                continue
            todo.append(m)
        if not todo:
            return
        with ThreadPoolExecutor(len(todo)) as pool:
            for m, size in zip(todo, pool.map(lambda m: one(cs.paths[m]), todo), strict=True):
                if size:
                    self.member_bytes[m] = size

    def _jump(self, skip_unused: bool | None, cache_dir: str | None) -> int | None:
        """Bytes of left-out chunks worth the extra requests of reading a member by parts (``skip_unused``);
        ``None``: members are streamed whole."""
        if skip_unused is False or not self.streaming or cache_dir is not None or self.corpus.timestamps == 1 \
                or self.timestamps == "all" or self.reindex_seasonal:
            return None
        partial = [m for m in self.modalities if by_parts(m, self.fix_s1_order)]
        first = self._first_remote(partial)
        if first is None:
            return None
        cs, modality = first
        remote = cs.paths[modality]
        from ..costmodel import probe
        from ..memberparts import FIRST_HEAD, WindowFile, first_chunk_bytes, first_member_bytes, parts_jump, warm_span
        from ..shardfile import open_binary

        ts = self.timestamps
        wanted = [0] if isinstance(ts, str) else [ts] if isinstance(ts, int) else ts  # str: "random"

        def chunk_bytes() -> int | None:
            # Its front is the opening request: one round trip.
            with WindowFile(open_binary(remote, front=FIRST_HEAD, **self.archive_kwargs)) as fh:
                chunk = first_chunk_bytes(fh)
                size = first_member_bytes(fh)
            if size:
                self.member_bytes[modality] = size
            if chunk and (ts == "random" or 0 in wanted):  # the first band chunk is read: a front holds it
                self.first_front = chunk + FIRST_HEAD
            return chunk

        try:
            with ThreadPoolExecutor(2) as pool:
                sized = pool.submit(self._measure_member_bytes, cs, modality)
                if skip_unused:
                    chunk_bytes()  # what each stream's opening request should bring
                    self.warm_span = False  # the fewest bytes: the first batch by parts too
                    sized.result()
                    return 0
                # The first member's front is read while the link is measured (its round trip hides behind the
                # probe's; the probe's own requests run in turn, as they time each other).
                chunk_read = pool.submit(chunk_bytes)
                link = probe(remote, self.archive_kwargs["storage_options"])
                chunk = chunk_read.result()
                sized.result()
        except OSError:  # the link could not be measured: members whole, as the published loader reads them
            return 0 if skip_unused else None
        # A worker has its ``SPREAD`` shards' responses in flight at once: on a host that caps its total rate
        # each gets that share, not the share of the probe's 32 connections (more workers only shrink it, which
        # favours parts; this errs towards whole members, as the published loader reads them).
        link = link.with_connections(SPREAD)
        self.warm_span = warm_span(link, chunk, self.member_bytes.get(modality, 0), self.corpus.timestamps, wanted,
                                   random=ts == "random")
        return parts_jump(link, chunk, self.corpus.timestamps, wanted, random=ts == "random")

    def _keys_of(self, cs: ChunkSet) -> list[str]:
        """Location ids of one file, in stored order (chunk file: its ``sample`` coordinate; shard: member keys)."""
        first = next(cs.paths[m] for m in self.modalities if m in cs.paths)
        if cs.kind == SHARDS:
            return self._shard_keys(cs)
        return [str(s) for s in open_chunk(first, **self.archive_kwargs).samples]

    def _shard_keys(self, cs: ChunkSet) -> list[str]:
        """Member keys of one shard set, every modality's shard accounted for: shards that end at different
        lengths are an error, and so is a damaged header; with ``on_error="skip"`` the locations before the
        damage (or the common length) are kept and a warning says how many were lost. Local sets are checked
        here for every modality; a remote set's other modalities are checked as they stream (their headers cost
        a request each: reading them all at construction would multiply the index by the modalities)."""
        found: dict[str, list[str]] = {}
        damaged: dict[str, DamagedShardError] = {}
        held = [m for m in self.modalities if m in cs.paths]
        for m in held if not is_url(cs.paths[held[0]]) else held[:1]:
            try:
                found[m] = [member.key for member in shard_index(cs.paths[m], **self.archive_kwargs)]
            except DamagedShardError as exc:
                if self.on_error == "raise":
                    raise
                damaged[m] = exc
                found[m] = [member.key for member in getattr(exc, "members", [])]
        lengths = {m: len(k) for m, k in found.items()}
        keep = min(lengths.values())
        intact = [n for m, n in lengths.items() if m not in damaged]
        if damaged:
            where, first = next(iter(damaged.items()))
            lost = f"{max(intact) - keep} locations" if intact else "an unknown number of locations"
            warnings.warn(f"skipping the rest of {cs.paths[where]}: {first.problem}; {lost} lost", RuntimeWarning,
                          stacklevel=4)
            self.skipped.append(str(first))
        elif len(set(lengths.values())) > 1:
            longest = max(lengths, key=lengths.__getitem__)
            shortest = min(lengths, key=lengths.__getitem__)
            message = (f"shards of one set end at different lengths: {cs.paths[shortest]} holds {lengths[shortest]} "
                       f"locations, {cs.paths[longest]} {lengths[longest]}; every modality's shard must hold the "
                       "same locations")
            if self.on_error == "raise":
                raise ModalityMismatchError(message)
            warnings.warn(f"{message}; the first {keep} are used, {lengths[longest] - keep} lost", RuntimeWarning,
                          stacklevel=4)
            self.skipped.append(message)
        return found[next(iter(found))][:keep]

    def _scan(self) -> list[list[str] | None]:
        def keys(cs: ChunkSet) -> list[str] | None:
            try:
                return self._keys_of(cs)
            except SSL4EOError:
                if self.on_error == "raise":
                    raise
                return None  # the worker skips the file and reports the error then

        with ThreadPoolExecutor(WALK_WORKERS) as pool:  # header walks are round trips: overlap many
            return list(pool.map(keys, self.sets))

    def _sample_counts(self, given: int | Sequence[int] | None, samples: Any) -> list[int]:
        n = len(self.sets)
        index = load_index(self.index, self.archive_kwargs.get("storage_options")) if self.index else None
        if samples is not None:
            return self._subset_counts(self._wanted(samples), index)
        if isinstance(given, int):
            return [given] * n
        if given is not None:
            if len(given) != n:
                raise ValueError(f"samples_per_file lists {len(given)} counts for {n} files")
            return [int(c) for c in given]
        if index is not None and self.streaming:
            return counts_from_index(index, self.sets, self.modalities)
        splits = {cs.split for cs in self.sets}
        split = splits.pop() if len(splits) == 1 else None
        names = [cs.name for cs in self.sets]
        if self.streaming:
            published = known_counts(self.sets, self.archive_kwargs.get("storage_options"))
            if published is not None:  # the published shards: counts from the published totals, checked as read
                self._counted = "the published totals"
                return published
        if not self.streaming and split is not None and schema.is_published_chunk_list(split, names):
            return [schema.SAMPLES_PER_FILE] * n  # the published files hold exactly 64 locations each
        default = schema.LOCATIONS_PER_SHARD if self.streaming else schema.SAMPLES_PER_FILE
        return [len(keys) if keys is not None else default for keys in self._scan()]

    def _wanted(self, samples: Any) -> set[str]:
        """The keys ``samples`` selects: locations of SSL4EO-S12; of TerraMesh member keys, SSL4EO-S12 ids taking
        their four seasons (``<id>_<season>`` one) as the members' own ``sample`` coordinates name them."""
        values = _sample_values(samples)
        if self.corpus.timestamps != 1 or not self.streaming:
            return {schema.location_key(v) for v in values}
        from ..shardindex import resolve_locations, root_of

        keys, missing = resolve_locations(self.sets, values, **self.archive_kwargs)
        if missing:
            raise ValueError(f"{len(missing)} of the samples asked for are in no member of {root_of(self.sets)} "
                             f"(searched the SSL4EO-S12 members' own sample ids): {', '.join(missing[:10])}"
                             f"{' ...' if len(missing) > 10 else ''}")
        return keys

    def _subset_counts(self, wanted: set[str], index: Any) -> list[int]:
        """Counts and ``self.rows`` for a selection of locations: only the shards that hold one are read, found
        through an index file, or the root's metadata table (its ``tar`` column), else by walking every shard;
        the member lists of those shards go to the workers, which then read the wanted members by range."""
        n = len(self.sets)
        scan = list(range(n))
        holding = None
        if self.streaming and index is None:
            try:
                table = read_root_table(self.sets, self.archive_kwargs.get("storage_options"))
            except (OSError, ImportError, ValueError):
                table = None  # no table (or geopandas): every shard is walked
            holding = shards_for_ids(self.sets, table, wanted) if table is not None else None
            scan = list(holding) if holding else scan
        keys: list[list[str] | None] = [[] for _ in range(n)]
        if self.streaming and (index is not None or holding):
            jobs = [(k, m) for k in scan for m in self.modalities if m in self.sets[k].paths]
            if index is not None:
                found = [index.members(m, self.sets[k].name) for k, m in jobs]
                index.check_all([(self.sets[k].paths[m], m, self.sets[k].name) for k, m in jobs],
                                self.archive_kwargs.get("storage_options"))
            else:
                # Each shard walked up to the last wanted member the table places in it.
                found = walk([self.sets[k].paths[m] for k, m in jobs],
                             until=[holding[k] for k, _m in jobs] if holding else None, **self.archive_kwargs)
            for (k, m), members in zip(jobs, found):
                self.members[self.sets[k].paths[m]] = members
                if keys[k] == []:
                    keys[k] = [x.key for x in members]
                elif [x.key for x in members] != keys[k]:
                    raise ModalityMismatchError(f"{self.sets[k].paths[m]} holds other locations than the shards of "
                                                f"the other modalities of {self.sets[k].name}")
        else:  # every shard's (first modality's) headers, damaged ones handled as on_error says
            keys = list(self._scan())
        self.rows = [[i for i, k in enumerate(ks) if k in wanted] if ks else [] for ks in keys]
        # Shards that hold none of the selection are never opened: their members stay out of what workers get.
        self.members = {p: v for k, cs in enumerate(self.sets) if self.rows[k] for p, v in
                        ((cs.paths[m], self.members[cs.paths[m]]) for m in self.modalities
                         if cs.paths.get(m) in self.members)}
        return [len(ks) if ks else 0 for ks in keys]

    # -- epochs, length, resume ------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The current epoch (shared with DataLoader workers, persistent ones included)."""
        return int(self._epoch[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch[0] = int(value)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: a new file and sample order (same seed -> same order)."""
        if epoch != self.epoch:
            self._resume_batches = None
            self._resume_worker = {}
            self._yielded = {}
        self.epoch = int(epoch)

    def _plan(self, num_workers: int, epoch: int | None = None, *, only: int | None = None) -> list[list[Batch]]:
        """Every worker's batches of this rank, or only worker ``only``'s (the others empty)."""
        epoch = self.epoch if epoch is None else epoch
        return epoch_plan(self.counts, seed=self.seed, epoch=epoch, rank=self.rank, world_size=self.world_size,
                          num_workers=num_workers, batch_size=self.batch_size, mix=self.mix, shuffle=self.shuffle,
                          drop_last=self.drop_last, buffer=self.shuffle_buffer if self.streaming else None,
                          rows=self.rows, groups=self.groups, probs=self.probs, only=only, spread=self.spread)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (with ``num_workers`` workers when ``batch_size`` is set)."""
        return epoch_length(self.counts, seed=self.seed, epoch=self.epoch, rank=self.rank,
                            world_size=self.world_size, num_workers=self.num_workers or 1, batch_size=self.batch_size,
                            shuffle=self.shuffle, drop_last=self.drop_last,
                            buffer=self.shuffle_buffer if self.streaming else None, rows=self.rows, groups=self.groups)

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
        if worker in self._resume_worker:  # per-worker state (torchdata's StatefulDataLoader)
            skip = self._resume_worker.pop(worker)
            return self._plan(num_workers, only=worker)[worker][skip:], skip
        if not self._resume_batches:
            return self._plan(num_workers, only=worker)[worker], 0
        plan = self._plan(num_workers)
        # Rebuild the order in which a DataLoader delivered the epoch, drop what was consumed and deal the rest
        # round-robin again, so the resumed DataLoader delivers exactly the batches that would have come next.
        taken = [0] * len(plan)
        sequence = []
        for w in delivery_order([len(p) for p in plan]):
            sequence.append(plan[w][taken[w]])
            taken[w] += 1
        consumed = self._resume_batches
        return sequence[consumed:][worker::num_workers], consumed

    def _spec(self) -> ReadSpec:
        return ReadSpec(sets=self.sets, counts=self.counts, modalities=self.modalities, timestamps=self.timestamps,
                        return_metadata=self.return_metadata, s2_offset=self.s2_offset,
                        fix_s1_order=self.fix_s1_order, on_error=self.on_error, seed=self.seed, epoch=self.epoch,
                        archive_kwargs=self.archive_kwargs, mix=self.mix, reindex_seasonal=self.reindex_seasonal,
                        prefetch=self.prefetch, members=self.members, counted=self._counted,
                        n_timestamps=self.corpus.timestamps, jump=self.jump, spread=self.spread,
                        first_front=self.first_front, member_bytes=self.member_bytes, warm_span=self.warm_span)

    def _reader(self, spec: ReadSpec, mine: list[Batch], *, shared: bool) -> Any:
        return (ShardReader if self.streaming else ChunkReader)(spec, mine, shared=shared)

    @property
    def read_ahead(self) -> dict[str, int]:
        """``{"used": n, "dropped": m}``: next-epoch first batches (``prepare_next_epoch``) that were delivered,
        and those dropped because another epoch came (or a resumed state), summed over all workers."""
        used, dropped = self._read_ahead.sum(0).tolist()
        return {"used": int(used), "dropped": int(dropped)}

    def _prepare_next(self, worker: int, num_workers: int, pool: Any) -> None:
        """In a worker that delivered its epoch: read the predicted next epoch's first batch now, before the
        DataLoader hears that this worker is done, so the epoch turn does not wait for a whole chunk set (the
        next :meth:`__iter__` takes it when the epoch is the one predicted, and drops it otherwise)."""
        epoch = next_epoch(self._served)
        if epoch is None:
            return
        mine = self._plan(num_workers, epoch, only=worker)[worker]
        if not mine:
            return
        spec = dataclasses.replace(self._spec(), epoch=epoch)
        job = _Prepared(epoch, worker, num_workers, mine, self._reader(spec, mine, shared=True), pool)
        job.read()
        self._prepared = job

    def _take_prepared(self, worker: int, num_workers: int) -> _Prepared | None:
        job, self._prepared = self._prepared, None
        if job is None:
            return None
        if (job.epoch, job.worker, job.num_workers) == (self.epoch, worker, num_workers) and job.error is None \
                and not self._resume_batches and worker not in self._resume_worker:
            self._read_ahead[worker % MAX_WORKERS, 0] += 1
            return job
        self._read_ahead[worker % MAX_WORKERS, 1] += 1
        job.discard()
        return None

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shared = info is not None
        pool = worker_pool(self._leases, worker, shared=shared) if self._leases is not None else None
        ready = self._take_prepared(worker, num_workers) if shared else None
        if shared:
            self._served = [*self._served[-1:], self.epoch]
        if ready is not None:
            mine, consumed, reader = ready.mine, 0, ready.reader
        else:
            mine, consumed = self._my_batches(worker, num_workers)
            reader = self._reader(self._spec(), mine, shared=shared)
        # The resume applies to this iteration only; a persistent worker's own copy of the dataset would
        # otherwise skip as many batches again in every later epoch.
        self._resume_batches = None
        self._yielded[worker] = consumed
        finished = False
        try:
            for bi, batch in enumerate(mine):
                prepared = bi == 0 and ready is not None
                if prepared:
                    lease, out = ready.lease, ready.out
                else:
                    lease = pool.acquire() if pool is not None else None
                try:
                    if not prepared:
                        out = reader.batch(batch, lease)
                    self.skipped += reader.skipped
                    reader.skipped = []
                    if out is None and lease is not None:
                        pool.release(lease)
                    if out is not None:
                        if self.transform is not None:
                            # Seeded by the batch's identity, not its position, so a resumed epoch augments the same.
                            f0, i0 = batch.rows[0]
                            key = rng_for(self.seed, self.epoch, SALT_AUGMENT, self.rank, f0, i0, len(batch.rows))
                            gen = torch.Generator().manual_seed(int(key.integers(0, 2**62)))
                            out = call_transform(self.transform, out, gen)
                        if self.normalize:
                            out = normalize_batch(out, s2_offset=self.s2_offset)
                        if lease is not None and lease.token is not None:
                            # The arena comes back when nothing the consumer holds shares its memory any more.
                            out = LeasedBatch(out, lease.token, track=not shared)
                except BaseException:
                    if lease is not None:  # never delivered: the arena is this worker's again
                        pool.release(lease)
                    raise
                if out is not None:
                    self._yielded[worker] = consumed + bi + 1
                    yield out
                    del out  # the consumer owns the batch now; holding it would double the worker's memory
                reader.release(bi, batch)
            finished = True
        finally:
            if hasattr(reader, "close"):
                reader.close()
        if finished and shared and self.prepare_next_epoch:
            self._prepare_next(worker, num_workers, pool)


class _Prepared:
    """The next epoch's first batch of one worker, read when it delivered its epoch (see ``_prepare_next``)."""

    def __init__(self, epoch: int, worker: int, num_workers: int, mine: list[Batch], reader: Any, pool: Any):
        self.epoch, self.worker, self.num_workers, self.mine, self.reader, self.pool = (epoch, worker, num_workers,
                                                                                       mine, reader, pool)
        self.lease: Any = None
        self.out: Any = None
        self.error: BaseException | None = None

    def read(self) -> None:
        try:
            self.lease = self.pool.acquire() if self.pool is not None else None
            self.out = self.reader.batch(self.mine[0], self.lease)
        except Exception as exc:  # noqa: BLE001 - the epoch reads it again in the open and reports it then
            self.error = exc

    def discard(self) -> None:
        """Not the epoch that came: give the arena back and close the reader."""
        self.out = None
        if self.lease is not None and self.pool is not None:
            self.pool.release(self.lease)
        if hasattr(self.reader, "close"):
            self.reader.close()


def next_epoch(served: Sequence[int]) -> int | None:
    """The epoch expected after ``served`` (the epochs a worker process served, oldest first): the last plus the
    last step (``set_epoch`` each epoch: +1; never called: the same again); ``None`` before a second epoch
    (a process that serves one epoch only is not a persistent worker: nothing would take its read-ahead)."""
    if len(served) < 2:
        return None
    return served[-1] + (served[-1] - served[-2])


def _probs(probs: Mapping[str, float] | Sequence[float], found: Sequence[str]) -> list[float]:
    """Per subset in ``found`` order, from ``{subset: p}`` or a list in the corpus's subset order."""
    if isinstance(probs, Mapping):
        unknown = [k for k in probs if k not in found]
        if unknown:
            raise ValueError(f"probs names subsets {unknown}; the selected ones are {list(found)}")
        return [float(probs.get(s, 0.0)) for s in found]
    values = [float(p) for p in probs]
    if len(values) != len(found):
        raise ValueError(f"probs has {len(values)} entries for the subsets {list(found)}")
    return values


def _sample_values(samples: Any) -> list[str]:
    """The ids of a list or a table (``sample`` column, else its index) as given (7-digit ids, ``<id>_<t>``,
    TerraMesh keys)."""
    if hasattr(samples, "columns"):
        values = samples["sample"] if "sample" in samples.columns else samples.index
    else:
        values = samples
    return [str(v) for v in values]
