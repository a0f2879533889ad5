"""Check chunk files against the format: every file, every problem, one report.

``validate(source)`` checks a file, a list of files, a split folder or a dataset root: the archive (opens,
CRC of every member, duplicate entries), the schema (dims, dtypes, band names, sizes, chunking), values
(typical ranges, NaN, cloud classes), identifiers (``sample_id``, S1 ``time_`` vs ``file_id`` order) and
agreement between modality files of the same chunk (sample ids, grid).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import s1order, schema
from .checks import dataset_problems, infer_modality
from .errors import SSL4EOError
from .layout import is_chunk_file, resolve
from .reader import ChunkFile, _modality_dataset, open_chunk
from .zarrv2 import read_chunk

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
        from_ids = s1order.product_times(ids, pattern)
        if from_ids is None:
            report.warnings.append("file_id does not follow the published product-id pattern")
        elif mod.name == "S1GRD":
            gap = np.abs(from_ids.astype(np.int64) - times.astype("datetime64[s]").astype(np.int64))
            if (gap > s1order.TOLERANCE_S).any():
                perm = s1order.chronological_order(ids, times)
                if perm is not None:
                    rows = s1order.misordered_rows(perm)
                    report.warnings.append(
                        f"{s1order.FIX_NOTE}: {rows.size} locations (e.g. {samples[rows[0]]}); readers of this "
                        "library reorder it on the fly, `ssl4eo-zarr repair` rewrites the file in time_ order")
                else:
                    rows = np.unique(np.nonzero(gap > s1order.TOLERANCE_S)[0])
                    report.errors.append(
                        f"S1 file_id disagrees with time_ for {rows.size} samples (e.g. {samples[rows[0]]}), "
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
        ds = _modality_dataset([cf])
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
) -> Report:
    """Validate a file, files, split folder or dataset root (see module docstring); returns a :class:`Report`."""
    if isinstance(source, str | os.PathLike) and is_chunk_file(source) and not os.path.isdir(source):
        parent = os.path.basename(os.path.dirname(os.fspath(source)))
        mod = parent if parent in schema.MODALITIES else None
        return Report([validate_file(os.fspath(source), modality=mod, size=size, check_values=check_values)])
    sets = resolve(source, split=split)
    reports: dict[str, FileReport] = {}
    items = [(m, p) for cs in sets for m, p in cs.paths.items()]
    iterator = progress(items, desc="validate", unit="file") if progress else items
    for m, p in iterator:
        if not os.path.exists(p):
            reports[p] = FileReport(p, m, errors=["file is missing (its chunk exists in other modalities)"])
        else:
            reports[p] = validate_file(p, modality=m or None, size=size, check_values=check_values)
    for cs in sets:
        _check_chunkset(dict(cs.paths), reports)
    return Report(list(reports.values()))
