"""Check chunk files and WebDataset shards against the format: every file, every problem, one report.

``validate(source)`` checks a file, a list of files, a split folder or a dataset root of either distribution.
Chunk files: the archive (opens, CRC of every member, duplicate entries), the schema (dims, dtypes, band
names, sizes, chunking), values (typical ranges, NaN, cloud classes), identifiers (``sample_id``, S1 ``time_``
vs ``file_id`` order) and agreement between modality files of the same chunk (sample ids, grid). Shards:
tar integrity, every member's archive and schema, values, duplicate keys, and the same keys in the same
order in every modality's shard.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import s1order, schema
from .checks import dataset_problems, infer_modality
from .chunkfile import ChunkFile, open_chunk
from .cluster import map_ordered
from .errors import SSL4EOError
from .layout import SHARDS, ChunkSet, is_chunk_file, resolve
from .views.chunkfiles import modality_dataset
from .zarrv2 import read_array, read_chunk

#: Fraction of pixels outside the typical range above which a file is reported (values outside do occur).
RANGE_TOLERANCE = 0.01


@dataclass
class FileReport:
    """Problems of one file: ``errors`` break the format, ``warnings`` are unusual but legal."""

    path: str
    modality: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class Report:
    """All file reports of one validation run."""

    files: list[FileReport]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    @property
    def n_errors(self) -> int:
        return sum(len(f.errors) for f in self.files)

    def format(self, *, verbose: bool = False) -> str:
        lines = []
        for f in self.files:
            status = "OK" if f.ok else "FAIL"
            if f.ok and not f.warnings and not verbose:
                continue
            lines.append(f"{status:4s} {f.path}")
            lines += [f"     error: {e}" for e in f.errors]
            lines += [f"     warning: {w}" for w in f.warnings]
        bad = sum(not f.ok for f in self.files)
        lines.append(f"{len(self.files)} files checked, {bad} with errors, {self.n_errors} errors")
        return "\n".join(lines)


def _check_values(cf: ChunkFile, mod: schema.Modality, report: FileReport) -> None:
    meta = cf.array(schema.BANDS_VAR)
    lo, hi = mod.valid_range
    outside = total = nan = 0
    for t in range(meta.grid[1]):
        for s in range(meta.grid[0]):
            block = read_chunk(cf.archive, meta, (s, t, 0, 0, 0))
            block = block[: min(meta.chunks[0], meta.shape[0] - s * meta.chunks[0])]
            if block.dtype.kind == "f":
                isnan = np.isnan(block)
                nan += int(isnan.sum())
                outside += int(((block < lo) | (block > hi)).sum())
            else:
                outside += int(((block < lo) | (block > hi)).sum())
            total += block.size
    if nan:
        report.errors.append(f"{nan} NaN values in {schema.BANDS_VAR!r} (NaNs are filled in the published data)")
    if total and outside / total > RANGE_TOLERANCE:
        report.warnings.append(f"{outside / total:.1%} of values outside the typical range {lo}..{hi} {mod.units}")
    if schema.CLOUD_VAR in cf.group.arrays:
        cm = cf.read(schema.CLOUD_VAR)
        bad = np.unique(cm[cm > max(schema.CloudClass)])
        if bad.size:
            report.errors.append(f"cloud_mask holds values {bad.tolist()} outside the classes 0..6")


def _check_identifiers(ds, mod: schema.Modality, report: FileReport) -> None:
    samples = np.asarray(ds["sample"].values).astype(str)
    if "sample_id" in ds:
        want = np.char.add(np.char.add(samples[:, None], "_"), np.arange(ds.sizes["time"]).astype(str)[None, :])
        got = np.asarray(ds["sample_id"].values).astype(str)
        if got.shape == want.shape and not np.array_equal(got, want):
            report.errors.append("sample_id is not '<sample>_<t>' everywhere")
    if "time_" in ds and "file_id" in ds:
        times = np.asarray(ds["time_"].values)
        if np.isnat(times).any():
            report.errors.append("time_ holds NaT")
            return
        if (np.diff(times.astype("datetime64[s]").astype(np.int64), axis=1) < 0).any():
            report.errors.append("time_ is not chronological over the 4 timestamps")
        pattern = s1order.S1_PRODUCT_TIME if mod.name == "S1GRD" else s1order.S2_PRODUCT_TIME
        ids = np.asarray(ds["file_id"].values)
        if s1order.product_times(ids, pattern) is None:
            report.warnings.append("file_id does not follow the published product-id pattern")
        if mod.name == "S1GRD":
            # Each location on its own, as the readers decide: one id that carries no time leaves the others
            # checked, and a fixable location never hides one that no reordering reconciles.
            perm, left = s1order.plan_order(ids, times)
            rows = s1order.misordered_rows(perm)
            if rows.size:
                report.warnings.append(
                    f"{s1order.FIX_NOTE}: {rows.size} locations (e.g. {samples[rows[0]]}); readers of this "
                    "library reorder it on the fly, `ssl4eo-zarr repair` rewrites the file in time_ order")
            if left.size:
                report.errors.append(
                    f"S1 file_id disagrees with time_ for {left.size} samples (e.g. {samples[left[0]]}), "
                    "and no reordering of the timestamps reconciles them")


def validate_file(path: str, *, modality: str | None = None, size: int | None = None,
                  check_values: bool = True) -> FileReport:
    """Check one modality file; never raises for a damaged file, reports it instead."""
    report = FileReport(path=os.fspath(path), modality=modality)
    try:
        cf = open_chunk(report.path)
        dups = cf.archive.duplicate_names()
        if dups:
            report.errors.append(f"{len(dups)} duplicate zip entries (e.g. {dups[0]!r}); readers see only the last")
        if not cf.group.consolidated:
            report.errors.append("consolidated metadata (.zmetadata) missing; xr.open_zarr needs it")
        ds = modality_dataset([cf])
        mod = schema.get_modality(modality) if modality else infer_modality(ds)
        report.modality = mod.name if mod else None
        report.errors += dataset_problems(ds, mod, size=size)
        if mod is None:
            return report
        bands = cf.array(schema.BANDS_VAR)
        want = (min(bands.shape[0], schema.SAMPLES_PER_FILE), 1, *bands.shape[2:])
        if bands.chunks != want:
            report.errors.append(f"'bands' chunks are {bands.chunks}, expected {want} (one chunk per timestamp)")
        if schema.CLOUD_VAR in cf.group.arrays:
            cm = cf.array(schema.CLOUD_VAR)
            want_cm = (min(cm.shape[0], schema.SAMPLES_PER_FILE), 1, *cm.shape[2:])
            if cm.chunks != want_cm:
                report.errors.append(f"'cloud_mask' chunks are {cm.chunks}, expected {want_cm}")
        _check_identifiers(ds, mod, report)
        if check_values:
            _check_values(cf, mod, report)
        for name in cf.archive.names():  # CRC of every member, chunks of variables not read above included
            cf.archive.read(name)
        cf.archive.release()
    except SSL4EOError as exc:
        report.errors.append(str(exc))
    return report


def _check_member(key: str, archive, group, mod: schema.Modality | None, size: int | None, check_values: bool,
                  problems: list[str], timestamps: int | None = None) -> None:
    """Schema and values of one shard member (offset removed for S2), problems prefixed with its key.
    ``timestamps``: what the corpus's members hold (TerraMesh: 1), else the modality's own count."""
    from .shardfile import bands_meta, member_metadata, read_time

    meta = bands_meta(group, archive.path)
    t, c, h, w = meta.shape
    edge = size or schema.PATCH_SIZE
    say = problems.append
    if mod is not None and mod.known:
        if mod.name in schema.CHUNK_MODALITIES and meta.dtype != mod.dtype:
            say(f"{key}: 'bands' is {meta.dtype}, expected {mod.dtype}")
        if c != mod.n_bands:
            say(f"{key}: {c} bands, {mod.name} has {mod.n_bands}")
        want = mod.n_timestamps if mod.static or timestamps is None else timestamps
        if t != want:
            say(f"{key}: {t} timesteps, {mod.name} members here have {want}")
    if (h, w) != (edge, edge):
        say(f"{key}: patches are {h} x {w} px, expected {edge} x {edge}")
    for name in ("center_lat", "center_lon", "crs", "time", "file_id"):
        if name not in group.arrays:
            say(f"{key}: variable {name!r} is missing")
    if name_problems := [n for n in ("time", "file_id") if n in group.arrays and group.arrays[n].shape != (t,)]:
        say(f"{key}: {name_problems} must have one value per timestep ({t})")
    if mod is not None and mod.name in ("S2L1C", "S2L2A") and schema.CLOUD_VAR not in group.arrays:
        say(f"{key}: {mod.name} needs {schema.CLOUD_VAR!r}")
    facts = member_metadata(archive, group)
    if not (-90 <= facts["center_lat"] <= 90 and -180 <= facts["center_lon"] <= 180):
        say(f"{key}: centre {facts['center_lat']}, {facts['center_lon']} is not a lat/lon")
    if not check_values:
        return
    lo, hi = (mod.valid_range if mod is not None else (-np.inf, np.inf))
    shift = mod.offset if mod is not None else 0
    outside = total = nan = 0
    slab = np.empty((c, h, w), dtype=meta.dtype)
    for k in range(t):
        read_time(archive, meta, k, slab)
        if slab.dtype.kind == "f":
            nan += int(np.isnan(slab).sum())
        outside += int(((slab < lo - shift) | (slab > hi - shift)).sum())
        total += slab.size
    if nan:
        say(f"{key}: {nan} NaN values in 'bands'")
    if total and outside / total > RANGE_TOLERANCE and mod is not None and mod.known:
        say(f"warning:{key}: {outside / total:.1%} of values outside the typical range")
    if schema.CLOUD_VAR in group.arrays:
        cm = read_array(archive, group.arrays[schema.CLOUD_VAR])
        if (cm > max(schema.CloudClass)).any():
            say(f"{key}: cloud_mask holds values outside the classes 0..6")


def validate_shard(path: str, *, modality: str | None = None, size: int | None = None,
                   check_values: bool = True, corpus: str | None = None) -> tuple[FileReport, list[str]]:
    """Check one shard: the tar reads to its end, every member is a sound archive in the member schema (of
    ``corpus``: TerraMesh members hold one timestamp; default from the shard's name). Returns the report and the
    member keys in shard order. Never raises for a damaged shard."""
    from .shardfile import ShardStream, member_modality, open_member_group

    report = FileReport(path=path, modality=modality)
    keys: list[str] = []
    mod = schema.find_modality(modality) if modality else None
    stream = None
    try:
        stream = ShardStream(path)
        while (member := stream.advance()) is not None:
            keys.append(member.key)
            archive, group = open_member_group(stream.read(), f"{path}/{member.name}")
            if mod is None and modality:
                mod = member_modality(modality, archive, group)
            problems: list[str] = []
            if corpus is None:
                from .layout import corpus_of_files

                corpus = corpus_of_files([path]).name
            timestamps = schema.get_corpus(corpus).timestamps
            _check_member(member.key, archive, group, mod, size, check_values, problems, timestamps)
            for name in archive.names():
                archive.read(name)  # CRC of every entry
            for p in problems:
                (report.warnings if p.startswith("warning:") else report.errors).append(p.removeprefix("warning:"))
    except SSL4EOError as exc:
        report.errors.append(str(exc))
    finally:
        if stream is not None:
            stream.close()
    dups = [k for k, n in Counter(keys).items() if n > 1]
    if dups:
        report.errors.append(f"keys repeat within the shard: {dups[:3]}")
    if not keys and not report.errors:
        report.errors.append("the shard holds no .zarr.zip members")
    return report, keys


def _check_shard_keys(cs: ChunkSet, keys: dict[str, list[str]], reports: dict[str, FileReport]) -> None:
    mods = [m for m in cs.paths if keys.get(m) is not None]
    if len(mods) < 2:
        return
    ref = keys[mods[0]]
    for m in mods[1:]:
        other = keys[m]
        if other != ref:
            k = next((j for j, (a, b) in enumerate(zip(ref, other)) if a != b), min(len(ref), len(other)))
            reports[cs.paths[m]].errors.append(
                f"keys differ from {cs.paths[mods[0]]} at location {k}: "
                f"{other[k] if k < len(other) else None!r} vs {ref[k] if k < len(ref) else None!r} "
                "(every modality's shard must hold the same keys in the same order)")


def _check_chunkset(paths: dict[str, str], reports: dict[str, FileReport]) -> None:
    opened = {}
    for m, p in paths.items():
        if reports[p].ok:
            try:
                opened[m] = open_chunk(p)
            except SSL4EOError:
                continue
    if len(opened) < 2:
        return
    ref_mod = next(iter(opened))
    ref = opened[ref_mod]
    for m, cf in opened.items():
        if m == ref_mod:
            continue
        rep = reports[cf.path]
        if not np.array_equal(ref.samples, cf.samples):
            rep.errors.append(f"sample ids differ from {ref.path}")
            continue
        for name in ("crs", "x_", "y_", "center_lat", "center_lon"):
            if name in ref.group.arrays and name in cf.group.arrays and not np.array_equal(ref.read(name), cf.read(name)):
                rep.errors.append(f"{name!r} differs from {ref.path} (modalities must share one grid)")


def validate(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split: str | None = None,
    size: int | None = None,
    check_values: bool = True,
    progress: Callable | None = None,
    client: Any = None,
) -> Report:
    """Validate a file, files, split folder or dataset root (see module docstring); returns a :class:`Report`.

    ``client``: a ``dask.distributed.Client`` or scheduler address: each file (or shard) is checked by a task on
    the cluster's workers (which must reach the files: a shared file system or URLs); the report is the same."""
    if isinstance(source, str | os.PathLike) and is_chunk_file(source) and not os.path.isdir(source):
        parent = os.path.basename(os.path.dirname(os.fspath(source)))
        mod = parent if parent in schema.MODALITIES else None
        return Report([validate_file(os.fspath(source), modality=mod, size=size, check_values=check_values)])
    sets = resolve(source, split=split)
    if sets and sets[0].kind == SHARDS:
        return _validate_shards(sets, size=size, check_values=check_values, progress=progress, client=client)
    items = [(m, p) for cs in sets for m, p in cs.paths.items()]
    found = map_ordered(_check_chunk_file, items, client=client, progress=progress, desc="validate", unit="file",
                        key="validate", size=size, check_values=check_values)
    reports: dict[str, FileReport] = {p: r for (_m, p), r in zip(items, found)}
    for cs in sets:
        _check_chunkset(dict(cs.paths), reports)
    return Report(list(reports.values()))


def _check_chunk_file(item: tuple[str, str], *, size: int | None, check_values: bool) -> FileReport:
    m, p = item
    if not os.path.exists(p):
        return FileReport(p, m, errors=["file is missing (its chunk exists in other modalities)"])
    return validate_file(p, modality=m or None, size=size, check_values=check_values)


def _check_shard(item: tuple[str, str, str], *, size: int | None,
                 check_values: bool) -> tuple[FileReport, list[str] | None]:
    m, p, corpus = item
    if not os.path.exists(p):
        return FileReport(p, m, errors=["shard is missing (it exists in other modalities)"]), None
    report, found = validate_shard(p, modality=m, size=size, check_values=check_values, corpus=corpus)
    return report, (found if report.ok else None)


def _validate_shards(sets: Sequence[ChunkSet], *, size: int | None, check_values: bool,
                     progress: Callable | None, client: Any = None) -> Report:
    items = [(m, p, cs.corpus) for cs in sets for m, p in cs.paths.items()]
    done = map_ordered(_check_shard, items, client=client, progress=progress, desc="validate", unit="shard",
                       key="validate", size=size, check_values=check_values)
    reports: dict[str, FileReport] = {p: r for (_m, p, _c), (r, _k) in zip(items, done)}
    keys: dict[str, list[str] | None] = {p: k for (_m, p, _c), (_r, k) in zip(items, done)}
    for cs in sets:
        known: dict[str, list[str]] = {}
        for m, p in cs.paths.items():
            shard_keys = keys[p]
            if shard_keys is not None:
                known[m] = shard_keys
        _check_shard_keys(cs, known, reports)
    return Report(list(reports.values()))
