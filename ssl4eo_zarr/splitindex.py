"""A split index: what opening a set of local chunk files learns (each file's zip directory, ``.zmetadata``,
sample ids and S1 time order), kept in the user's cache so the next open reads none of it again.

One index file per set of paths, in ``$SSL4EO_ZARR_CACHE`` (default the platform cache folder), written
atomically, on a background thread after the first open returns (encoding 15,000 directories cost
that open ~1 s); a later open in the same process waits for it.
Every entry is keyed by the file's size and modification time: a file replaced, truncated or
deleted since is opened afresh and its entry replaced, so a stale entry is never used; a missing or damaged
index is rebuilt silently. Remote files are not indexed (checking their version would cost a request each).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .chunkfile import ChunkFile
from .storage import ZipArchive, atomic_write, cache_dir, is_url
from .zarrv2 import parse_group

#: Bumped when the layout of the index changes (older indexes are then rebuilt).
VERSION = 1


_SAVING: dict[str, threading.Thread] = {}  # index file -> its save in flight, in this process


def wait_for_saves() -> None:
    """Block until every index this process is writing in the background is written."""
    for thread in list(_SAVING.values()):
        thread.join()


def _fingerprint(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class SplitIndex:
    """The index of one set of files (see the module docstring). ``get`` gives a :class:`ChunkFile` without
    reading the file, ``put`` records one opened normally; ``save`` writes the index when anything changed."""

    def __init__(self, paths: Sequence[str]):
        self.paths = [os.path.abspath(os.fspath(p)) for p in paths]
        key = hashlib.sha256("\n".join(self.paths).encode()).hexdigest()[:32]
        self.file = os.path.join(cache_dir(), "splits", f"{key}.json")
        self.enabled = not any(is_url(p) for p in paths)
        self.entries: dict[str, dict[str, Any]] = {}
        self.blobs: list[str] = []
        self.dirty = False
        self._lock = threading.Lock()
        # Recorded while opening, encoded when saving: path -> (version, directory, group, samples).
        self._pending: dict[str, tuple[tuple[int, int], Mapping[str, tuple[int, ...]], Any, np.ndarray,
                                       bytes]] = {}
        self._pending_s1: dict[str, tuple[np.ndarray | None, list[str]]] = {}
        if self.enabled:
            saving = _SAVING.get(self.file)
            if saving is not None:
                saving.join()
            self._load()

    def _load(self) -> None:
        try:
            with open(self.file, encoding="utf-8") as f:
                doc = json.load(f)
            if doc["version"] != VERSION or doc["paths"] != self.paths:
                return
            self.entries, self.blobs = doc["entries"], doc["blobs"]
        except (OSError, ValueError, KeyError, TypeError):
            self.entries, self.blobs = {}, []  # missing or damaged: rebuilt from the files

    def get(self, path: str, **archive_kwargs: Any) -> ChunkFile | None:
        """The file as :func:`~ssl4eo_zarr.chunkfile.open_chunk` would open it, from the index, or ``None``
        when the index has no entry for this version of the file."""
        full = os.path.abspath(path)
        entry = self.entries.get(full)
        if entry is None or tuple(entry["version"]) != _fingerprint(full):
            return None
        try:
            archive = ZipArchive(path, **archive_kwargs)
            names, encoded = self.blobs[entry["names"]], entry["directory"]

            def directory() -> list[tuple[str, tuple[int, ...]]]:
                table = np.frombuffer(base64.b64decode(encoded), dtype="<i8").reshape(-1, 6)
                return list(zip(names.split("\n"), map(tuple, table.tolist())))

            archive.adopt(directory)
            group = parse_group(self._decoded(entry["zmetadata"]), archive.path)
            samples = self._samples(entry["samples"])
        except (ValueError, KeyError, TypeError, IndexError):
            return None
        cf = ChunkFile(archive.path, archive, group, samples)
        if "s1" in entry:
            cf.s1_order = None if entry["s1"] is None else np.asarray(entry["s1"], dtype=np.int64)
            cf.s1_left = [str(s) for s in entry.get("s1_left", [])]
        return cf

    def _decoded(self, i: int) -> bytes:
        cache = self.__dict__.setdefault("_decoded_blobs", {})
        if i not in cache:
            cache[i] = base64.b64decode(self.blobs[i])
        return cache[i]

    def _samples(self, i: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_sample_arrays", {})
        if i not in cache:
            cache[i] = np.array(self.blobs[i].split("\n"))
        return cache[i]

    def _blob(self, text: str) -> int:
        """Index of ``text`` in the shared table (member lists, metadata and sample ids repeat across files)."""
        if not hasattr(self, "_blob_ids"):
            self._blob_ids = {b: i for i, b in enumerate(self.blobs)}
        i = self._blob_ids.get(text)
        if i is None:
            i = self._blob_ids[text] = len(self.blobs)
            self.blobs.append(text)
        return i

    def put(self, cf: ChunkFile) -> None:
        """Record a file opened from disk (its directory, metadata and samples are in memory already): only
        references are kept here, the encoding happens in :meth:`save`."""
        if not self.enabled:
            return
        full = os.path.abspath(cf.path)
        finger = _fingerprint(full)
        if finger is None or ".zmetadata" not in cf.archive:
            return
        raw = cf.group.raw
        if raw is None:  # read member by member: nothing consolidated to keep
            return
        directory = cf.archive.directory_view()
        with self._lock:  # files are opened on several threads
            self._pending[full] = (finger, directory, cf.group, cf.samples, raw)
            self.dirty = True

    def _encode(self, full: str, finger: tuple[int, int], directory: Mapping[str, tuple[int, ...]], group: Any,
                samples: np.ndarray, raw: bytes) -> None:
        groups = self.__dict__.setdefault("_group_blobs", {})
        if id(group) not in groups:  # files of a modality share one parsed group: encode its bytes once
            groups[id(group)] = (group, self._blob(base64.b64encode(raw).decode("ascii")))
        names = self.__dict__.setdefault("_names_blobs", {})
        members = list(directory)
        # Files of one modality with the same metadata hold the same members: join their names once.
        shape_key = (id(group), len(members), members[0], members[-1])
        if shape_key not in names:
            names[shape_key] = self._blob("\n".join(members))
        self.entries[full] = {
            "version": list(finger),
            "names": names[shape_key],
            "directory": base64.b64encode(np.asarray(list(directory.values()), dtype="<i8").tobytes()).decode(),
            "zmetadata": groups[id(group)][1],
            "samples": self._blob("\n".join(str(s) for s in samples)),
        }

    def put_s1_order(self, cf: ChunkFile, perm: np.ndarray | None, left: Sequence[str] = ()) -> None:
        """Record the S1 time order found for a file (``None``: already chronological) and the locations left
        as stored (see :func:`ssl4eo_zarr.s1order.plan_order`)."""
        if not self.enabled:
            return
        full = os.path.abspath(cf.path)
        with self._lock:
            if full in self._pending:
                self._pending_s1[full] = (perm, list(left))
                return
        entry = self.entries.get(full)
        if entry is not None and (entry.get("s1", "unset"), entry.get("s1_left", [])) != (
                None if perm is None else perm.tolist(), list(left)):
            entry["s1"] = None if perm is None else perm.tolist()
            entry["s1_left"] = list(left)
            self.dirty = True

    def save(self, *, background: bool = False) -> None:
        """Write the index if anything changed; with ``background`` on a thread of its own (the process waits
        for it at exit, and a later open of the same files waits for it first)."""
        if not (self.enabled and self.dirty):
            return
        if not background:
            self._save_now()
            return
        thread = threading.Thread(target=self._save_now, name="ssl4eo-split-index")
        _SAVING[self.file] = thread
        thread.start()

    def _save_now(self) -> None:
        try:
            with self._lock:
                pending, self._pending = self._pending, {}
                pending_s1, self._pending_s1 = self._pending_s1, {}
            for full, item in pending.items():
                self._encode(full, *item)
                if full in pending_s1 and full in self.entries:
                    perm, left = pending_s1[full]
                    self.entries[full]["s1"] = None if perm is None else perm.tolist()
                    self.entries[full]["s1_left"] = left
            wanted = set(self.paths)
            live = {p: e for p, e in self.entries.items() if p in wanted}
            try:
                with atomic_write(self.file, "w") as f:  # dumps, not dump: only dumps uses the C encoder
                    f.write(json.dumps({"version": VERSION, "paths": self.paths, "entries": live, "blobs": self.blobs},
                                       separators=(",", ":")))
                self.dirty = False
            except OSError:
                pass  # a read-only cache costs a slower open next time, nothing else
        finally:
            if _SAVING.get(self.file) is threading.current_thread():
                del _SAVING[self.file]


__all__ = ["SplitIndex", "wait_for_saves"]
