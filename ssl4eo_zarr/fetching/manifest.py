"""DEST's record of a fetch: the manifest (selection, source versions, files with CRC-32, the ``complete`` mark
written last), the guards around it (a foreign DEST, changed sources, temporaries) and ``verify``."""


from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ..layout import FETCH_MANIFEST, SHARDS
from ..storage.lock import LOCK, load_resumable, write_json
from ..storage.zip import crc32
from .plan import FetchPlan, output_chunk_files, output_shards
from .selection import SelectionError

#: The manifest DEST holds.
MANIFEST = FETCH_MANIFEST


#: Members staged for output shards not yet written (deleted when the fetch completes).
STAGING = ".fetch"


def _disk_full(exc: OSError, where: str) -> None:
    if exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(where)) or ".").free
        raise OSError(errno.ENOSPC, f"the disk is full writing {where} ({free / 1e6:.0f} MB free); nothing "
                                    "partial was left: free space and rerun to resume") from None


def _load_manifest(dest: str, settings: dict[str, Any]) -> dict[str, Any]:
    return load_resumable(os.path.join(dest, MANIFEST), settings, {"files": {}},
                          lambda other: SelectionError(f"{dest} holds another fetch ({other}); fetch into a new folder, "
                                                       "or rerun with the same arguments to resume"))


def _save_manifest(dest: str, doc: dict[str, Any]) -> None:
    write_json(os.path.join(dest, MANIFEST), doc)


def _complete(dest: str, doc: dict[str, Any], rel: str) -> bool:
    entry = doc["files"].get(rel)
    path = os.path.join(dest, rel)
    return bool(entry) and os.path.exists(path) and os.path.getsize(path) == entry["size"]


def _file_crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            crc = crc32(block, crc)
    return crc


def _remove_temporaries(dest: str, expected: Mapping[str, Any]) -> None:
    """Temporaries a killed run left (``atomic_write``'s ``.<name>.*.tmp``) in the folders this fetch writes:
    never data, always incomplete. Nothing else under DEST is touched."""
    folders = {dest, os.path.join(dest, "splits")} | {os.path.dirname(os.path.join(dest, rel)) for rel in expected}
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def _refuse_foreign(dest: str) -> None:
    """A non-empty DEST without this library's fetch manifest holds someone else's files: never write there."""
    try:
        names = [n for n in os.listdir(dest) if n != LOCK]
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise SelectionError(f"{dest} is a file, not a folder to fetch into") from None
    if names and not os.path.exists(os.path.join(dest, MANIFEST)):
        shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
        raise SelectionError(f"{dest} is not empty ({shown}) and holds no {MANIFEST}: it is not a fetch to resume; "
                             "fetch into a new or empty folder (nothing was written)")


def _expected_outputs(plan: FetchPlan, target: str, per_shard: int) -> dict[str, list[str]]:
    """``{file relative to DEST: location keys it will hold}`` of every data file the fetch writes."""
    if target == SHARDS:
        return {os.path.join(plan.split, m, name): [s.key for s in group]
                for name, group, mods in output_shards(plan, per_shard) for m in mods}
    return {os.path.join(plan.split, m, name): [s.key for s in group]
            for name, group in output_chunk_files(plan) for m in plan.modalities}


def _forget_changed(dest: str, doc: dict[str, Any], changed: Sequence[str]) -> None:
    """Written files made from source files that changed since: fetched again, with a warning naming both."""
    gone = set(changed)
    stale = [rel for rel, entry in doc["files"].items()
             if rel in doc["expected"] and gone & set(entry.get("sources", gone))]
    for rel in stale:
        del doc["files"][rel]
    if stale:
        warnings.warn(f"{len(changed)} source files changed since this fetch began ({', '.join(changed[:3])}"
                      f"{' ...' if len(changed) > 3 else ''}): {len(stale)} files of {dest} made from them are fetched "
                      f"again ({', '.join(sorted(stale)[:3])}{' ...' if len(stale) > 3 else ''})", stacklevel=4)


def verify(dest: str) -> list[str]:
    """Problems of a fetched DEST, each naming the file and what is wrong; empty when the fetch finished and every
    selected location is in DEST, in every modality, intact. Checks the manifest's ``complete`` mark (written
    last), every planned file against the selection it should hold (location keys, in order), and every written
    file (data, metadata table, split list) against its size and CRC-32. Reads every written file once."""
    path = os.path.join(dest, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return [f"{dest}: no {MANIFEST}: not a fetched dataset (or its manifest was removed)"]
    except ValueError as exc:
        return [f"{path}: not readable JSON ({exc}): the manifest is damaged"]
    problems = []
    files: dict[str, Any] = doc.get("files") or {}
    expected: dict[str, list[str]] | None = doc.get("expected")
    if doc.get("complete") is False:
        problems.append(f"{dest}: the fetch did not finish ({sum(r in files for r in expected or {})} of "
                        f"{len(expected or {})} data files written): rerun the same fetch to complete it")
    if expected is not None:
        for rel, keys in sorted(expected.items()):
            entry = files.get(rel)
            if entry is None:
                problems.append(f"{os.path.join(dest, rel)}: not written (it is to hold {len(keys)} selected "
                                "locations)")
                continue
            held = [m["key"] for m in entry["members"]] if "members" in entry else entry.get("locations")
            if held is not None and held != keys:
                problems.append(f"{os.path.join(dest, rel)}: holds {len(held)} locations, the selection puts "
                                f"{len(keys)} there ({sorted(set(keys) - set(held))[:3]} missing)")
        placed = {k for keys in expected.values() for k in keys}
        lost = [k for k in (doc.get("settings") or {}).get("locations", []) if k not in placed]
        if lost:
            problems.append(f"{dest}: {len(lost)} selected locations have no file ({', '.join(lost[:5])})")
    for rel, entry in sorted(files.items()):
        path = os.path.join(dest, rel)
        if not os.path.exists(path):
            problems.append(f"{path}: missing")
        elif os.path.getsize(path) != entry["size"]:
            problems.append(f"{path}: {os.path.getsize(path)} bytes, the manifest says {entry['size']}")
        elif _file_crc(path) != entry["crc32"]:
            problems.append(f"{path}: CRC-32 differs from the manifest's (the file changed or is damaged)")
    return problems

