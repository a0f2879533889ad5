"""Only what you need: a subset of SSL4EO-S12 fetched from its host into a dataset of its own.

:func:`fetch` plans from indexes alone (tar headers of shards, zip directories and sample ids of chunk files,
both kept in the user's cache), selects locations (ids, a bounding box, months, dates, cloud cover, a seeded
random sample) and moves only what the selection needs: for shards, the selected locations' ``.zarr.zip``
members, one range request each; for chunk files, the chunks of the files that hold a selected location
(chunk files pack 64 locations per chunk, so a sparse selection moves whole chunks).

DEST is a dataset root in the published layout that this library, xarray and the published loaders open:
shards renumbered from 000001 with the same keys in the same order in every modality (512 per shard, the last
fewer), or chunk files of the selected locations (64 per file) with their split list; the subset's rows of the
metadata table when one was read; and ``fetch_manifest.json``: the source, each source file's size and version,
the selection, and each written file's size and CRC-32 with each member's CRC-32.

Nothing half-written is ever visible: output files are written to temporaries and renamed. Members fetched for
an output shard are staged on disk as they arrive (``DEST/.fetch``, checked by CRC when reused), so an
interrupted fetch (Ctrl-C, SIGKILL, a lost connection) resumes without fetching them again, and a rerun on a
complete DEST moves only index requests. Requests are bounded (``workers``), retried with backoff, and 429/503
answers wait as ``Retry-After`` says.
"""


from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import schema
from ..layout import CHUNKS, SHARDS, write_split_list
from ..shardindex import WALK_WORKERS
from ..storage import atomic_write, basename
from ..storage.lock import BuildLock
from .manifest import (
    MANIFEST,
    STAGING,
    _complete,
    _expected_outputs,
    _file_crc,
    _forget_changed,
    _load_manifest,
    _refuse_foreign,
    _remove_temporaries,
    _save_manifest,
    verify,
)
from .plan import FetchPlan, PlanEstimate, Selected, estimate_plan, output_shards, plan_fetch
from .selection import SelectionError, read_ids
from .transfer import ShardJob, _to_chunks, _to_shards, make_output_shard


@dataclass
class FetchResult:
    """What :func:`fetch` did: ``files`` written (``{modality: [paths]}``), ``locations`` in DEST, ``nbytes``
    moved for members or chunks (index requests not counted), ``reused`` members taken from staging, ``seconds``
    spent moving and writing them (planning not counted)."""

    dest: str
    plan: FetchPlan
    files: dict[str, list[str]]
    locations: int
    nbytes: int = 0
    reused: int = 0
    seconds: float = 0.0


def fetch(source: str, dest: str, *, split: str, modalities: Sequence[str], locations: Any = None,
          bbox: Sequence[float] | None = None, months: Sequence[int] | None = None, dates: Sequence[Any] | None = None,
          max_cloud: float | None = None, metadata: str | None = None, limit: int | None = None, seed: int = 0,
          to: str | None = None, workers: int | None = None, dry_run: bool = False,
          storage_options: Mapping[str, Any] | None = None, progress: Callable[..., Any] | None = None,
          per_shard: int = schema.LOCATIONS_PER_SHARD, index: str | None = None,
          notify: Callable[[str], Any] | None = None, index_workers: int = WALK_WORKERS,
          client: Any = None) -> FetchResult | FetchPlan:
    """Fetch a subset of SSL4EO-S12 v1.1 into a dataset root of its own (see the module docstring).

    Parameters
    ----------
    source:
        A root of either distribution: a path, an ``http(s)://`` static host or hub ``resolve/main`` URL,
        ``hf://datasets/...``, ``s3://``.
    dest:
        The local folder to write (created); rerunning with the same arguments resumes.
    split, modalities:
        ``"train"``/``"val"``; e.g. ``["S2L2A", "S1GRD"]``.
    locations:
        Only these 7-digit ids: a text file (one a line) or a sequence. An id the source lacks is an error
        naming it (nothing is written). TerraMesh: member keys, or SSL4EO-S12 ids taking their four one-season
        members (``<id>_<season>`` one), looked up in the members' own ``sample`` coordinates.
    bbox, months, dates, max_cloud:
        Filters on the metadata table (``metadata``, by default the one published at the root): patch centre
        in ``(W, S, E, N)`` degrees; an S2 acquisition in one of ``months`` (1..12); every S2 acquisition within
        ``dates = (start, end)``; cloud fraction at most ``max_cloud`` (0..1) in every timestamp. Timestamps are
        not cut: DEST holds every location's four, as published.
    limit, seed:
        At most ``limit`` of the selected locations, drawn with ``seed``. With no other filter over the
        published SSL4EO-S12 shards (globally shuffled) each shard's share of a uniform draw is taken as a run
        near its front, so planning walks ~40 headers a shard, not ~430 (see docs/fetch.md).
    to:
        ``"shards"`` or ``"chunks"`` (default: as the source). Converting re-encodes locations; DEM, NDVI and
        LULC exist as shards only.
    workers:
        Member requests in flight at once (default: chosen from the measured link, enough that round trips hide
        behind transfers: 8 for local files, up to 64 against a host that caps its total rate).
    dry_run:
        Plan only: returns the :class:`FetchPlan` (print ``plan.summary()``), writes nothing.
    storage_options:
        Credentials (``{"headers": {"Authorization": ...}}``) or fsspec options for the source.
    progress:
        A tqdm-like factory for progress bars (shards indexed, bytes fetched; the CLI passes tqdm).
    index:
        An index file of the source (``ssl4eo-zarr index``): planning then reads no tar header; a shard that
        changed since it was made is refused (:class:`~ssl4eo_zarr.shardindex.StaleIndexError`).
    notify:
        Called with the :class:`PlanEstimate`'s summary (requests, bytes and time planning and moving will
        take, from a few probes) before any tar header is read; the CLI prints it.
    index_workers:
        Shards indexed at once (tar header walks are round trips, a few bytes each: they overlap).
    client:
        A ``dask.distributed.Client`` or a scheduler address: output shards are dealt to the cluster's workers
        (one task each, ``workers`` member requests at once in each), which write them into DEST (a folder every
        worker reaches: a shared file system); this process plans, keeps the one manifest and resumes as without
        a cluster. Shard sources only (chunk files convert in this process).

    Returns
    -------
    FetchResult (or FetchPlan with ``dry_run``)

    Raises
    ------
    SelectionError
        Unknown ids, an empty selection (naming the filter that emptied it), a DEST holding another fetch.
    DatasetNotFoundError
        A source file vanished (404) mid-fetch; what was completed is kept and a rerun resumes.
    OSError
        A full disk (nothing partial is left).
    """
    plan = plan_fetch(source, split=split, modalities=modalities, locations=locations, bbox=bbox, months=months,
                      dates=dates, max_cloud=max_cloud, metadata=metadata, limit=limit, seed=seed, workers=workers,
                      storage_options=storage_options, index=index, progress=progress, notify=notify,
                      index_workers=index_workers)
    if dry_run:
        return plan
    if workers is None:
        workers = plan.estimate.workers if plan.estimate is not None else 8
    target = to or plan.kind
    if target not in (SHARDS, CHUNKS):
        raise ValueError(f"to must be 'shards' or 'chunks', got {to!r}")
    if target == CHUNKS and plan.sets[0].corpus != schema.SSL4EO_S12.name:
        raise SelectionError(f"{source} is {plan.sets[0].corpus}, whose members hold one timestamp; chunk files hold "
                             f"{schema.N_TIMESTAMPS} seasons per location: fetch to shards")
    if target == CHUNKS:
        missing = [m for m in plan.modalities if m not in schema.CHUNK_MODALITIES]
        if missing:
            raise SelectionError(f"{', '.join(missing)} exist as shards only: chunk files have no place for them "
                                 "(drop them or fetch to shards)")
    os.makedirs(dest, exist_ok=True)
    # What defines the subset; the source may change between runs (another mirror of the same files).
    settings = {"split": split, "modalities": plan.modalities, "to": target,
                "locations": [s.key for s in plan.selected], "per_shard": per_shard}
    try:
        return _write(plan, dest, settings, source, split, target, workers, storage_options, progress, per_shard,
                      client)
    except OSError as exc:
        if exc.errno == errno.ENOSPC and "disk is full" not in str(exc):  # from anywhere: the manifest, a folder
            free = shutil.disk_usage(dest).free if os.path.isdir(dest) else 0
            raise OSError(errno.ENOSPC, f"the disk is full writing {dest} ({free / 1e6:.0f} MB free); nothing "
                                        "partial was left: free space and rerun to resume") from None
        raise


def _write(plan: FetchPlan, dest: str, settings: dict[str, Any], source: str, split: str, target: str, workers: int,
           storage_options: Mapping[str, Any] | None, progress: Callable[..., Any] | None,
           per_shard: int, client: Any = None) -> FetchResult:
    _refuse_foreign(dest)
    with BuildLock(dest):
        doc = _load_manifest(dest, settings)
        doc["source"] = source
        expected = _expected_outputs(plan, target, per_shard)
        _remove_temporaries(dest, expected)
        now = {p: {"version": json.loads(json.dumps(v))} for p, v in plan.versions.items()}
        changed = sorted(p for p, v in (doc.get("source_files") or {}).items() if p in now and v != now[p])
        doc["source_files"] = now
        doc["selection"] = [{"filter": name, "locations": n} for name, n in plan.steps]
        doc["expected"] = expected
        doc["complete"] = False  # until the last file is written: verify and the readers say so meanwhile
        if changed:
            _forget_changed(dest, doc, changed)
        _save_manifest(dest, doc)  # from here DEST is this fetch's: a rerun after a kill is recognised
        bar = progress(total=plan.nbytes, unit="B", unit_scale=True, desc="fetch") if progress else None
        kw: dict[str, Any] = {"storage_options": storage_options}
        began = time.perf_counter()
        try:
            if target == SHARDS:
                files, moved, reused = _to_shards(plan, dest, doc, kw, workers, bar, per_shard, client)
            else:
                files, moved, reused = _to_chunks(plan, dest, doc, kw, workers, bar)
        finally:
            if bar is not None:
                bar.close()
            try:
                _save_manifest(dest, doc)
            except OSError:  # a full disk: the manifest of the last completed file stays, and the error goes on
                pass
        if target == CHUNKS:
            listed = write_split_list(dest, split, [basename(p) for p in files[plan.modalities[0]]])
            doc["files"][os.path.relpath(listed, dest)] = {"size": os.path.getsize(listed), "crc32": _file_crc(listed)}
        if plan.table_path is not None:
            _write_table(plan, dest, doc, storage_options)
        shutil.rmtree(os.path.join(dest, STAGING), ignore_errors=True)
        doc["complete"] = True  # last: every selected member of every modality is in DEST
        _save_manifest(dest, doc)
        seconds = time.perf_counter() - began
    return FetchResult(dest, plan, files, len(plan.selected), moved, reused, seconds)


def _write_table(plan: FetchPlan, dest: str, doc: dict[str, Any], storage_options: Mapping[str, Any] | None) -> None:
    """The subset's rows of the source's metadata table, its columns and generation as published, under the
    name the 2026 release uses (or ``splits/`` for a first-release table)."""
    from ..metadata import table_rows

    assert plan.table_path is not None
    source = plan.raw_table if plan.raw_table is not None else plan.table_path
    rows = table_rows(source, [s.key for s in plan.selected], storage_options=storage_options)
    first = "time_id" in rows.columns
    path = os.path.join(dest, *(["splits"] if first else []), f"{plan.split}_metadata.parquet")
    if _complete(dest, doc, os.path.relpath(path, dest)):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as f:
        rows.to_parquet(f)
    doc["files"][os.path.relpath(path, dest)] = {"size": os.path.getsize(path), "crc32": _file_crc(path)}


__all__ = ["MANIFEST", "STAGING", "FetchPlan", "FetchResult", "PlanEstimate", "Selected", "SelectionError", "ShardJob",
           "estimate_plan", "fetch", "make_output_shard", "output_shards", "plan_fetch", "read_ids", "verify"]
