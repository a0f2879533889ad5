"""Where chunk files live: resolve a dataset root, a split folder, a file or a list of files.

The published layout is ``ROOT/{split}/{modality}/ssl4eos12_{split}_seasonal_data_NNNNNN.zarr.zip`` with
``ROOT/splits/ssl4eos12_{split}.txt`` listing the file names; the same file name in each modality folder
holds the same locations. This module only computes paths; it opens nothing but split lists and folders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import schema
from .errors import DatasetNotFoundError
from .storage import atomic_write, basename, exists, is_url, join, parent, read_text

SUFFIX = ".zarr.zip"


@dataclass(frozen=True)
class ChunkSet:
    """One chunk (up to 64 locations): the same file name in each modality folder.

    ``paths`` maps modality name to the file path or URL.
    """

    name: str
    split: str | None
    paths: Mapping[str, str] = field(hash=False)


def _listdir(path: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    import fsspec

    fs, p = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    try:
        return sorted(basename(e) for e in fs.ls(p, detail=False))
    except (FileNotFoundError, NotImplementedError, OSError):
        return []


def is_chunk_file(path: Any) -> bool:
    return isinstance(path, str | os.PathLike) and os.fspath(path).endswith(SUFFIX)


def split_file_names(root: str, split: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """File names of ``split`` under ``root``: from the split list when present, else from a modality folder."""
    listing = join(root, schema.split_list_name(split))
    if exists(listing, storage_options):
        names = [basename(line.strip()) for line in read_text(listing, storage_options).splitlines() if line.strip()]
        return names
    for mod in schema.CHUNK_MODALITIES:
        names = [n for n in _listdir(join(root, split, mod), storage_options) if n.endswith(SUFFIX)]
        if names:
            return names
    raise DatasetNotFoundError(
        f"split {split!r} not found under {root}: neither {schema.split_list_name(split)} nor "
        f"{split}/<modality>/*{SUFFIX} exist"
    )


def write_split_list(root: str, split: str, names: Sequence[str], *, merge: bool = False) -> str:
    """Write ``root/splits/ssl4eos12_{split}.txt`` (atomically, one name per line); with ``merge``, keep the names
    already listed. Returns the path."""
    path = os.path.join(root, schema.split_list_name(split))
    if merge and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            names = sorted({line.strip() for line in f if line.strip()} | set(names))
    with atomic_write(path, "w") as f:
        f.write("".join(n + "\n" for n in names))
    return path


def available_splits(root: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Splits present under a dataset root, in the published order (train, val, then others)."""
    found = []
    for split in schema.SPLITS:
        if exists(join(root, schema.split_list_name(split)), storage_options) or any(
            exists(join(root, split, m), storage_options) for m in schema.CHUNK_MODALITIES
        ):
            found.append(split)
    if not found and not is_url(root):
        found = [d for d in _listdir(root, None)
                 if any(os.path.isdir(os.path.join(root, d, m)) for m in schema.CHUNK_MODALITIES)]
    return found


def _present_modalities(split_dir: str, storage_options) -> list[str]:
    return [m for m in schema.CHUNK_MODALITIES if exists(join(split_dir, m), storage_options)]


def resolve(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split: str | None = None,
    modalities: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[ChunkSet]:
    """Chunk sets named by ``source``.

    ``source`` is a dataset root (``ROOT``, with ``split`` choosing ``train``/``val``; all splits when
    omitted), a split folder (``ROOT/val``), one ``*.zarr.zip`` inside a modality folder, or a list of such
    files (the other modalities of each are found beside it, in the sibling modality folders).
    ``modalities`` defaults to every modality folder present. Raises :class:`DatasetNotFoundError` naming
    what is missing.
    """
    mods = [schema.get_modality(m).name for m in modalities] if modalities else None
    if isinstance(source, str | os.PathLike):
        src = os.fspath(source)
        if is_chunk_file(src):
            return resolve([src], modalities=modalities, storage_options=storage_options)
        if not exists(src, storage_options):
            raise DatasetNotFoundError(f"dataset path not found: {src}")
        splits = [split] if split else None
        if basename(src) in schema.CHUNK_MODALITIES:
            src = parent(src)
        if _present_modalities(src, storage_options) and not exists(join(src, "splits"), storage_options):
            split_dirs = [(basename(src), parent(src), src)]
        else:
            splits = splits or available_splits(src, storage_options)
            if not splits:
                raise DatasetNotFoundError(f"no SSL4EO-S12 splits under {src} (expected {src}/train or {src}/val)")
            split_dirs = [(s, src, join(src, s)) for s in splits]
        sets = []
        for split_name, root, split_dir in split_dirs:
            present = _present_modalities(split_dir, storage_options)
            use = mods or present
            missing = [m for m in use if m not in present]
            if missing:
                raise DatasetNotFoundError(f"modality folder(s) {missing} missing under {split_dir}")
            if not use:
                raise DatasetNotFoundError(f"no modality folders under {split_dir}")
            if split_dir.rstrip("/") == src.rstrip("/"):
                names = sorted(n for n in _listdir(join(split_dir, use[0]), storage_options) if n.endswith(SUFFIX))
                listing = join(parent(src), schema.split_list_name(split_name))
                if exists(listing, storage_options):
                    names = split_file_names(parent(src), split_name, storage_options)
            else:
                names = split_file_names(root, split_name, storage_options)
            sets += [ChunkSet(n, split_name, {m: join(split_dir, m, n) for m in use}) for n in names]
        return sets
    files = [os.fspath(p) for p in source]
    if not files:
        raise DatasetNotFoundError("no chunk files given")
    sets = []
    for f in files:
        if not is_chunk_file(f):
            raise DatasetNotFoundError(f"{f} is not a {SUFFIX} chunk file")
        mod_dir = parent(f)
        own = basename(mod_dir)
        split_dir = parent(mod_dir)
        parsed = schema.parse_chunk_file_name(f)
        split_name = parsed[0] if parsed else (basename(split_dir) or None)
        if own not in schema.CHUNK_MODALITIES:
            if mods and len(mods) > 1:
                raise DatasetNotFoundError(f"{f} is not inside a modality folder ({'/'.join(schema.CHUNK_MODALITIES)}), "
                                           "so its other modalities cannot be found")
            sets.append(ChunkSet(basename(f), split_name, {mods[0] if mods else "": f}))
            continue
        use = mods or [own]
        sets.append(ChunkSet(basename(f), split_name, {m: join(split_dir, m, basename(f)) for m in use}))
    return sets
