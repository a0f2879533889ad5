"""Rewrite S1GRD chunk files from before the 2026-02-19 fix so that every reader sees S1 in ``time_`` order.

Only the affected arrays change (``bands`` and ``file_id``, re-encoded with their own codec and chunking);
every other member is copied as stored. Files without the problem are never rewritten.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .chunkfile import open_chunk, s1_plan, warn_s1_order
from .layout import SUFFIX
from .s1order import misordered_rows, reorder
from .schema import MODALITIES
from .storage import ZipArchive
from .writer import write_members
from .zarrv2 import chunk_indices, encode_chunk, read_array

#: Arrays that stay as stored: ``time_`` is already chronological and ``sample_id`` is ``<sample>_<t>``.
_KEEP = ("time_", "sample_id")


@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair_s1_order` did to one file: ``moved`` locations reordered (0: left as it was), and
    the ids of the locations ``left`` as stored because their ``file_id`` and ``time_`` cannot be reconciled."""

    source: str
    target: str
    moved: int
    left: tuple[str, ...] = ()


def _reordered_members(archive: ZipArchive, perm: np.ndarray) -> dict[str, bytes]:
    cf = open_chunk(archive, keep_open=True)
    out: dict[str, bytes] = {}
    # Every chunk is written, also those the source skipped as empty (all fill value): reordering may move
    # data into them.
    for name, meta in cf.group.arrays.items():
        if meta.dims[:2] != ("sample", "time") or name in _KEEP:
            continue
        fixed = reorder(read_array(archive, meta), perm)
        for index in chunk_indices(meta):
            region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, meta.chunks, meta.shape))
            block = fixed[region]
            if block.shape != meta.chunks:  # edge chunks are stored full-size, padded
                full = np.full(meta.chunks, meta.fill_value if meta.fill_value is not None else 0, dtype=meta.dtype)
                full[tuple(slice(0, s) for s in block.shape)] = block
                block = full
            out[meta.chunk_key(index)] = encode_chunk(block, meta)
    return out


def repair_s1_order(path: str | os.PathLike, out: str | os.PathLike | None = None) -> RepairResult:
    """Put one S1GRD chunk file in ``time_`` order.

    Parameters
    ----------
    path:
        A local ``*.zarr.zip`` S1GRD chunk file.
    out:
        Where to write the result (default: replace ``path`` atomically, keeping its permissions). A file
        without the problem is copied there unchanged.

    Returns
    -------
    RepairResult
        ``moved`` is the number of locations whose timestamps were reordered (0: nothing to do, and ``path``
        is left byte-identical).
    """
    source = os.fspath(path)
    target = os.fspath(out) if out is not None else source
    with ZipArchive(source) as archive:
        cf = open_chunk(archive, keep_open=True)
        perm, left = s1_plan(cf)
        if left:
            warn_s1_order(source, len(misordered_rows(perm)), left, once=False)
        if perm is None:
            if target != source:
                os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
                shutil.copyfile(source, target)
            return RepairResult(source, target, 0, tuple(left))
        changed = _reordered_members(archive, perm)
        names = archive.names()  # directory order, kept; chunks the source lacked follow
        extra = sorted(n for n in changed if n not in set(names))
        write_members(target, [(n, changed[n] if n in changed else archive.read(n)) for n in names] +
                      [(n, changed[n]) for n in extra])
    return RepairResult(source, target, int(len(misordered_rows(perm))), tuple(left))


def find_chunk_files(paths: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """``(file, path relative to its argument)`` for each ``*.zarr.zip`` named or found under a folder."""
    found = []
    for p in (str(os.fspath(q)) for q in paths):
        if os.path.isdir(p):
            for folder, _dirs, names in sorted(os.walk(p)):
                for n in sorted(names):
                    if n.endswith(SUFFIX):
                        full = os.path.join(folder, n)
                        found.append((full, os.path.relpath(full, p)))
        else:
            found.append((p, os.path.basename(p)))
    return found


def repair_files(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, *,
                 progress: Callable[..., Iterable] | None = None) -> list[RepairResult]:
    """:func:`repair_s1_order` for every S1GRD file named or found under folders in ``paths``.

    With ``out`` the results go to ``out/<path relative to the argument>``; otherwise files are replaced in
    place. Files in other modality folders are skipped (the problem is S1's alone).
    """
    files = [(f, rel) for f, rel in find_chunk_files(paths)
             if os.path.basename(os.path.dirname(os.path.abspath(f))) not in set(MODALITIES) - {"S1GRD"}]
    items = progress(files, desc="repair", unit="file") if progress else files
    return [repair_s1_order(f, None if out is None else os.path.join(os.fspath(out), rel)) for f, rel in items]
