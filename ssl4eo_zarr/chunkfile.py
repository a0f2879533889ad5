"""One chunk file without xarray: its archive, metadata and sample ids, read on demand.

What the loader, the validator, the repair tool and the xarray view share. Opening reads the zip directory,
``.zmetadata`` and the ``sample`` coordinate; nothing else.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import s1order, schema
from .errors import CorruptFileError, S1OrderWarning
from .storage import ZipArchive
from .zarrv2 import ArrayMeta, GroupMeta, read_array, read_group


@dataclass
class ChunkFile:
    """One opened modality file: its archive, metadata and ``sample`` ids (nothing else is read)."""

    path: str
    archive: ZipArchive
    group: GroupMeta
    samples: np.ndarray
    #: The S1 time order when already known (from a split index): a permutation, ``None`` (in order), or
    #: ``"unknown"``.
    s1_order: Any = field(default="unknown", compare=False, repr=False)
    #: Ids of the locations whose S1 order cannot be reconciled (known with ``s1_order``).
    s1_left: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    def array(self, name: str) -> ArrayMeta:
        try:
            return self.group.arrays[name]
        except KeyError:
            raise CorruptFileError(self.path, f"variable {name!r} is missing") from None

    def read(self, name: str, *, release: bool = True) -> np.ndarray:
        """Variable ``name`` as numpy (the archive is released afterwards unless ``release=False``)."""
        try:
            return read_array(self.archive, self.array(name))
        finally:
            if release:
                self.archive.release()


def open_chunk(path: str | os.PathLike | ZipArchive, *, require_sample: bool = True, keep_open: bool = False,
               **archive_kwargs: Any) -> ChunkFile:
    """Open one modality file: read its metadata and sample ids.

    Unless ``keep_open``, the archive is released afterwards (a local file's descriptor is closed and reopens
    on the next read), so a split of thousands of files never holds thousands of descriptors.
    ``require_sample=False`` also opens per-location archives (WebDataset members), which have no ``sample``.
    Raises :class:`CorruptFileError` (or :class:`UnsafeFileError`) naming the file when it is damaged.
    """
    archive = path if isinstance(path, ZipArchive) else ZipArchive(path, **archive_kwargs)
    group = read_group(archive)
    if "sample" in group.arrays:
        samples = read_array(archive, group.arrays["sample"])
    elif require_sample:
        raise CorruptFileError(archive.path, "coordinate 'sample' is missing")
    else:
        samples = np.array([], dtype=f"<U{schema.SAMPLE_ID_WIDTH}")
    if not keep_open:
        archive.release()
    return ChunkFile(archive.path, archive, group, samples)


_WARNED: set[str] = set()


def warn_s1_order(path: str, rows: int, left: Sequence[str] = (), *, once: bool = True) -> None:
    """One :class:`S1OrderWarning` per file and process (every time with ``once=False``): ``rows`` locations
    reordered, and the ids of the locations ``left`` as stored because their ``file_id`` and ``time_`` cannot
    be reconciled."""
    if (once and path in _WARNED) or (not rows and not len(left)):
        return
    _WARNED.add(path)
    parts = []
    if rows:
        parts.append(f"{path}: {s1order.FIX_NOTE}; {rows} locations are delivered in time_ order "
                     "(fix_s1_order=False delivers the file as stored; `ssl4eo-zarr repair` rewrites it)")
    if len(left):
        names = ", ".join(map(str, list(left)[:10])) + (f" and {len(left) - 10} more" if len(left) > 10 else "")
        parts.append(f"{path}: {len(left)} locations are delivered as stored because their S1 file_id and time_ "
                     f"cannot be reconciled by reordering ({names}; `ssl4eo-zarr validate` says what is wrong)")
    warnings.warn("; ".join(parts), S1OrderWarning, stacklevel=4)


def member_s1_order(file_id: np.ndarray, times: np.ndarray, where: str) -> np.ndarray | None:
    """The S1 order of one shard member (``file_id`` str ``[T]``, ``times`` int64 ns or datetime64 ``[T]``): the
    permutation int64 ``[1, T]`` that puts it in time order, or ``None``; warned as :func:`warn_s1_order` does,
    naming the member (``where``) when it cannot be reconciled."""
    perm, left = s1order.plan_order(np.asarray(file_id)[None], np.asarray(times).astype("datetime64[ns]")[None])
    warn_s1_order(where, 0 if perm is None else 1, [where.rsplit("/", 1)[-1]] if len(left) else [])
    return perm


def s1_plan(cf: ChunkFile) -> tuple[np.ndarray | None, list[str]]:
    """:func:`~ssl4eo_zarr.s1order.plan_order` of an S1 file: the permutation int64 ``[sample, time]`` (or
    ``None``) and the ids of the locations left as stored (reads ``file_id`` and ``time_``, a few kB)."""
    if "file_id" not in cf.group.arrays or "time_" not in cf.group.arrays:
        return None, []
    ids = cf.read("file_id", release=False)
    times = times_ns(cf)
    perm, left = s1order.plan_order(ids, times.view("datetime64[ns]"))
    return perm, [str(cf.samples[i]) for i in left]


def s1_permutation(cf: ChunkFile) -> np.ndarray | None:
    """int64 ``[sample, time]`` that puts an S1 file in ``time_`` order, or ``None`` (see :func:`s1_plan`)."""
    return s1_plan(cf)[0]


def times_ns(cf: ChunkFile) -> np.ndarray:
    """``time_`` as int64 nanoseconds since 1970 ``[n, 4]``, whatever CF units the file uses."""
    meta = cf.array("time_")
    raw = read_array(cf.archive, meta)
    units = meta.attrs.get("units", "")
    if units == schema.TIME_UNITS or raw.dtype.kind == "M":
        return raw.astype(np.int64)
    from xarray.coding.times import decode_cf_datetime

    decoded = decode_cf_datetime(raw, units, meta.attrs.get("calendar"))
    return np.asarray(decoded, dtype="datetime64[ns]").astype(np.int64)



__all__ = ["ChunkFile", "member_s1_order", "open_chunk", "s1_permutation", "s1_plan", "times_ns", "warn_s1_order"]
