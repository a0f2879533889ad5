"""Where the files live: resolve a dataset root, a split folder, a file, a list or a brace pattern of either
distribution, locally or on a static host. Opens nothing but split lists; remote roots are probed by name.

Two published layouts share ``ROOT/{split}/{modality}/``:

* chunk files ``ssl4eos12_{split}_seasonal_data_NNNNNN.zarr.zip`` (64 locations each), listed in
  ``ROOT/splits/ssl4eos12_{split}.txt``;
* WebDataset shards ``ssl4eos12_shard_NNNNNN.tar`` (512 locations each, the last fewer), numbered from 000001.

The same file name in each modality folder holds the same locations in the same order. Static hosts (the
dataset hub's ``resolve/main/`` URLs, public buckets over HTTPS, CDNs) answer 404 for a folder, so nothing
here lists a remote folder: split lists are read by name and shard counts found by probing the numbering.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from . import schema
from .errors import DatasetNotFoundError
from .storage import atomic_write, basename, is_url, join, parent, read_text
from .storage import exists as _exists_now

SUFFIX = ".zarr.zip"
SHARD_SUFFIX = ".tar"
CHUNKS, SHARDS = "chunks", "shards"


@dataclass(frozen=True)
class ChunkSet:
    """One file of each modality under the same name: a chunk file (up to 64 locations) when ``kind`` is
    ``"chunks"``, a WebDataset shard (about 512; TerraMesh up to 10,240) when ``"shards"``. ``paths`` maps
    modality to path or URL: the modalities this file has (a TerraMesh Major TOM shard has S1RTC, not S1GRD).
    ``subset`` is the shard name's prefix (``ssl4eos12``, ``majortom``), ``corpus`` the dataset
    (:data:`~ssl4eo_zarr.schema.CORPORA`)."""

    name: str
    split: str | None
    paths: Mapping[str, str] = field(hash=False)
    kind: str = CHUNKS
    subset: str | None = None
    corpus: str = "ssl4eo-s12"


def is_chunk_file(path: Any) -> bool:
    return isinstance(path, str | os.PathLike) and os.fspath(path).endswith(SUFFIX)


def is_shard_file(path: Any) -> bool:
    return isinstance(path, str | os.PathLike) and os.fspath(path).endswith(SHARD_SUFFIX)


_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand WebDataset-style brace patterns: ``shard_{000001..000005}.tar`` (zero padding kept) and
    ``{S2L1C,S1GRD}``; several braces multiply."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = len(lo) if lo.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [out for item in items for out in expand_braces(head + item + tail)]


#: The published TerraMesh loader's modality list inside a path: ``ROOT/val/[S2L2A,DEM]/majortom_shard_*.tar``.
_MOD_LIST = re.compile(r"/\[\s*([A-Za-z0-9_]+(?:\s*,\s*[A-Za-z0-9_]+)*)\s*\]/")


def published_urls(source: Any) -> list[tuple[str, list[str] | None]] | None:
    """The published loader's ``urls`` form, or ``None`` when ``source`` is not in it: shard patterns joined by
    ``::`` (one per subset), each may name its modalities as a ``/[S2L2A,DEM]/`` path segment. Returns
    ``(pattern with the first named modality's folder, the named modalities or None)`` per part."""
    if not isinstance(source, str | os.PathLike):
        return None
    text = os.fspath(source)
    parts = text.split("::")
    # fsspec chains protocols with "::" too (simplecache::s3://...): only shard patterns are split here.
    if len(parts) > 1 and not all(p.rstrip().endswith(SHARD_SUFFIX) for p in parts):
        return None
    out: list[tuple[str, list[str] | None]] = []
    for part in parts:
        match = _MOD_LIST.search(part)
        if match is None:
            out.append((part, None))
            continue
        names = [schema.modality_name(n.strip()) for n in match.group(1).split(",")]
        out.append((part[: match.start()] + f"/{names[0]}/" + part[match.end():], names))
    return out if len(out) > 1 or out[0][1] is not None else None


def named_modalities(source: Any) -> list[str] | None:
    """The modalities a published-loader ``urls`` source names (``/[S2L2A,DEM]/``), in order, or ``None``."""
    parts = published_urls(source)
    if parts is None or all(names is None for _p, names in parts):
        return None
    return list(dict.fromkeys(m for _p, names in parts for m in names or []))


def _listdir(path: str) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def split_file_names(root: str, split: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Chunk file names of ``split`` under ``root``: from the split list when present, else from a modality folder."""
    listing = join(root, schema.split_list_name(split))
    if exists(listing, storage_options):
        return [basename(line.strip()) for line in read_text(listing, storage_options).splitlines() if line.strip()]
    if not is_url(root):
        for mod in schema.CHUNK_MODALITIES:
            names = [n for n in _listdir(os.path.join(root, split, mod)) if n.endswith(SUFFIX)]
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


#: The most files a probe counts: far beyond any published split (TerraMesh train: 889 shards); a host that has
#: them all answers for names that do not exist.
MAX_PROBED = 1 << 16


def count_by_probing(present: Callable[[int], bool], *, guess: int | None = None, where: str = "the host") -> int:
    """The largest ``n`` with ``present(1..n)`` all true, for files numbered from 1 without gaps: about
    ``2 log2 n`` probes (two when ``guess`` is right), at most ``2 log2`` :data:`MAX_PROBED`."""
    if not present(1):
        return 0
    if guess and present(guess) and not present(guess + 1):
        return guess
    lo = 1
    while present(lo * 2):
        lo *= 2
        if lo >= MAX_PROBED:
            raise DatasetNotFoundError(f"{where} answers for file number {lo} and beyond: not a dataset's files "
                                       "(a host that answers every name?)")
    hi = lo * 2  # present(lo), not present(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if present(mid) else (lo, mid)
    return lo


# -- local folders -------------------------------------------------------------------------------------------

def _folder_kind(folder: str) -> str | None:
    names = _listdir(folder)
    if any(n.endswith(SHARD_SUFFIX) for n in names):
        return SHARDS
    if any(n.endswith(SUFFIX) for n in names):
        return CHUNKS
    return None


def _modality_folders(split_dir: str) -> dict[str, str]:
    """Modality folder -> kind, for every subfolder holding chunk files or shards (new modalities included)."""
    found = {d: k for d in _listdir(split_dir) if (k := _folder_kind(os.path.join(split_dir, d)))}
    order = {m: i for i, m in enumerate(schema.MODALITIES)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def available_splits(root: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Splits under a local dataset root (published order train, val, then others) or, for a URL, those whose
    split list or first shard answers."""
    if is_url(root):
        return [s for s in schema.SPLITS if exists(join(root, schema.split_list_name(s)), storage_options)
                or _probe_shards(root, s, list(schema.SHARD_MODALITIES), storage_options)
                or _terramesh_here(root, s, storage_options)]
    found = [d for d in _listdir(root) if _modality_folders(os.path.join(root, d))]
    return sorted(found, key=lambda s: (list(schema.SPLITS).index(s) if s in schema.SPLITS else 99, s))


def _pick_kind(kinds: set[str], where: str, distribution: str | None) -> str:
    if distribution:
        if distribution not in kinds:
            raise DatasetNotFoundError(f"no {distribution} under {where} (found: {', '.join(sorted(kinds)) or 'none'})")
        return distribution
    if len(kinds) > 1:
        raise DatasetNotFoundError(f"{where} holds both chunk files and shards; pass distribution='chunks' or "
                                   "'shards'")
    return kinds.pop()


def _local_split(root: str | None, split: str, split_dir: str, mods: list[str] | None,
                 distribution: str | None) -> list[ChunkSet]:
    folders = _modality_folders(split_dir)
    if not folders:
        raise DatasetNotFoundError(f"no modality folders with chunk files or shards under {split_dir}")
    kind = _pick_kind(set(folders.values()), split_dir, distribution)
    present = [m for m, k in folders.items() if k == kind]
    use = mods or ([m for m in present if m in schema.CHUNK_MODALITIES] if kind == CHUNKS else present)
    missing = [m for m in use if m not in present]
    if missing:
        raise DatasetNotFoundError(f"modality folder(s) {missing} missing under {split_dir} (found {present})")
    if kind == SHARDS:
        listed = {m: {n for n in _listdir(os.path.join(split_dir, m)) if n.endswith(SHARD_SUFFIX)} for m in present}
        corpus = schema.detect_corpus(set().union(*listed.values()), complete=True)
        return _shard_sets(split, sorted(set().union(*(listed[m] for m in use)), key=_shard_order), use, corpus,
                           lambda m, n: n in listed[m], lambda m, n: os.path.join(split_dir, m, n), split_dir)
    if root is not None and os.path.exists(os.path.join(root, schema.split_list_name(split))):
        names = split_file_names(root, split)
    else:
        names = [n for n in _listdir(os.path.join(split_dir, use[0])) if n.endswith(SUFFIX)]
    return [ChunkSet(n, split, {m: os.path.join(split_dir, m, n) for m in use}, kind) for n in names]


def _shard_order(name: str) -> tuple[int, str]:
    parsed = schema.parse_shard(name)
    return (parsed[1] if parsed else 1 << 30, name)


def _shard_sets(split: str, names: Sequence[str], use: Sequence[str], corpus: schema.Corpus,
                has: Callable[[str, str], bool], path: Callable[[str, str], str], where: str) -> list[ChunkSet]:
    """One :class:`ChunkSet` per shard name with the modalities its subset holds; a shard missing from a folder
    its subset should be in is an error naming it (a set holding none of ``use`` is left out)."""
    out = []
    for n in names:
        parsed = schema.parse_shard(n)
        prefix = parsed[0] if parsed else None
        sub = corpus.subset(prefix) if prefix else None
        expected = [m for m in use if sub is None or m in sub.modalities or schema.find_modality(m) is None]
        if not expected:
            continue
        missing = [m for m in expected if not has(m, n)]
        if missing:
            raise DatasetNotFoundError(f"shard {n} is missing from {', '.join(missing)} under {where}: the shards of "
                                       "all modalities must hold the same locations")
        out.append(ChunkSet(n, split, {m: path(m, n) for m in expected}, SHARDS, prefix, corpus.name))
    return out


#: What :func:`~ssl4eo_zarr.fetch` writes at the root of a fetched dataset; its ``complete`` mark comes last.
FETCH_MANIFEST = "fetch_manifest.json"


def warn_if_incomplete(root: str) -> None:
    """Warn when ``root`` is a fetched dataset whose fetch has not finished: it holds part of its selection."""
    path = os.path.join(root, FETCH_MANIFEST)
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return  # being rewritten this instant, or not ours to judge
    if isinstance(doc, dict) and doc.get("complete") is False:
        planned, done = len(doc.get("expected") or {}), len(doc.get("files") or {})
        warnings.warn(f"{root} is an unfinished fetch ({done} of {planned or '?'} files written): it holds only part of "
                      "its selection; rerun the same fetch to finish it (`ssl4eo-zarr verify` says what is missing)",
                      stacklevel=4)


def _resolve_local(src: str, split: str | None, mods: list[str] | None, distribution: str | None) -> list[ChunkSet]:
    if not os.path.isdir(src):
        raise DatasetNotFoundError(f"dataset path not found: {src}")
    if _folder_kind(src) and not _modality_folders(src):  # a modality folder: read its split
        src = os.path.dirname(os.path.abspath(src))
    if _modality_folders(src) and not os.path.isdir(os.path.join(src, "splits")):  # a split folder
        warn_if_incomplete(os.path.dirname(os.path.abspath(src)))
        return _local_split(os.path.dirname(os.path.abspath(src)), os.path.basename(os.path.abspath(src)), src, mods,
                            distribution)
    warn_if_incomplete(src)
    splits = [split] if split else available_splits(src)
    if not splits:
        raise DatasetNotFoundError(f"no SSL4EO-S12 splits under {src} (expected {src}/train or {src}/val)")
    out = []
    for s in splits:
        if not os.path.isdir(os.path.join(src, s)):
            raise DatasetNotFoundError(f"split {s!r} not found under {src}")
        out += _local_split(src, s, os.path.join(src, s), mods, distribution)
    return out


# -- remote roots (no listing) ----------------------------------------------------------------------------------

def _probe_shards(root: str, split: str, candidates: Sequence[str],
                  storage_options: Mapping[str, Any] | None) -> list[str]:
    return [m for m in candidates if exists(join(root, split, m, schema.shard_name(1)), storage_options)]


def _terramesh_here(root: str, split: str, storage_options: Mapping[str, Any] | None) -> bool:
    """Whether a URL holds a TerraMesh ``split`` (the first published shard of a subset answers)."""
    for sub in schema.TERRAMESH.subsets:
        first = sub.ranges.get(split, (0, 0))[0]
        if first and exists(join(root, split, "S2L2A", schema.shard_name(first, sub.prefix)), storage_options):
            return True
    return False


def _probe_terramesh(root: str, split: str, candidates: Sequence[str], mods: Sequence[str] | None,
                     storage_options: Mapping[str, Any] | None,
                     subsets: Sequence[str] | None = None) -> list[ChunkSet] | None:
    """A TerraMesh split at a URL, found by its shard names (no listing): each subset's first published shard,
    then its count by probing; ``None`` when none answers (then it is not TerraMesh)."""
    corpus = schema.TERRAMESH
    out: list[ChunkSet] = []
    after = 0  # a copy may number its SSL4EO-S12 shards on after its own Major TOM ones
    short: list[str] = []  # published shards of a subset that a published-numbered root lacks at its end
    for sub in corpus.subsets:
        here = [m for m in candidates if m in sub.modalities]
        if not here or split not in sub.ranges:
            continue
        # A subset not asked for is still counted (a copy numbers SSL4EO-S12 after it), never read or judged.
        wanted = subsets is None or sub.prefix in subsets
        published_first, published_last = sub.ranges[split]
        folder = join(root, split, here[0])
        firsts = [published_first]
        if sub.prefix == "ssl4eos12":
            if published_first == 1 or (not after and exists(join(folder, schema.shard_name(1, sub.prefix)),
                                                              storage_options)):
                continue  # numbered from 1: the SSL4EO-S12 distribution (however many shards), probed by the caller
            if after and after + 1 != published_first:
                firsts.append(after + 1)
        first = next((f for f in firsts if exists(join(folder, schema.shard_name(f, sub.prefix)), storage_options)),
                     None)
        if first is None:
            continue
        guess = published_last - published_first + 1

        def present(i: int, folder: str = folder, first: int = first, prefix: str = sub.prefix) -> bool:
            return exists(join(folder, schema.shard_name(first + i - 1, prefix)), storage_options)

        n = count_by_probing(present, guess=guess, where=folder)
        names = [schema.shard_name(first + i, sub.prefix) for i in range(n)]
        if sub.prefix == "majortom":
            after = first + n - 1
            if n < guess and wanted:
                short += [schema.shard_name(first + i, sub.prefix) for i in range(n, guess)]
        if not wanted:
            continue
        have = [here[0]] + [m for m in here[1:] if exists(join(root, split, m, names[-1]), storage_options)]
        lacking = [m for m in here if m not in have and mods]
        if lacking:
            raise DatasetNotFoundError(f"{join(root, split)}: no {sub.prefix} shards of {lacking} (probed {names[-1]})")
        out += [ChunkSet(n_, split, {m: join(root, split, m, n_) for m in have}, SHARDS, sub.prefix, corpus.name)
                for n_ in names]
        if sub.prefix == "ssl4eos12" and first == published_first and short:
            # Both subsets where the published numbering puts them: the Major TOM shards before are missing,
            # not a smaller copy.
            raise DatasetNotFoundError(
                f"{join(root, split)} is numbered as the published TerraMesh but lacks {len(short)} of its Major TOM "
                f"shards ({short[0]}{' .. ' + short[-1] if len(short) > 1 else ''}): a partial mirror? Read the "
                "subsets that are whole with subsets=[...], or name the shards as files (a brace pattern)")
    if not out:
        return None
    if mods:
        missing = [m for m in mods if not any(m in cs.paths for cs in out)]
        if missing:
            raise DatasetNotFoundError(f"no TerraMesh shards of {missing} at {join(root, split)}")
    return out


def _refuse_catch_all(src: str, storage_options: Mapping[str, Any] | None) -> None:
    """A host that answers for a name no dataset has (an HTML site, a catch-all rule) would pass every probe:
    one request tells, before any count is probed."""
    probe = join(src, "val", "S2L2A", "ssl4eo-zarr-no-such-file-0000000.tar")
    if exists(probe, storage_options):
        raise DatasetNotFoundError(f"{src} answers for {probe}, which no dataset has: a catch-all or HTML site, not "
                                   "a static host of the dataset's files; check the URL (a hub's files are under "
                                   ".../resolve/main)")


def _resolve_url(src: str, split: str | None, mods: list[str] | None, distribution: str | None,
                 storage_options: Mapping[str, Any] | None, subsets: Sequence[str] | None = None) -> list[ChunkSet]:
    src = src.rstrip("/")
    _refuse_catch_all(src, storage_options)
    if schema.find_modality(basename(src)) is not None:  # a modality folder: its split folder
        src = parent(src)
    if split is None and basename(src) in schema.SPLITS:
        root, splits = parent(src), [basename(src)]
    else:
        root, splits = src, ([split] if split else available_splits(src, storage_options))
    if not splits:
        raise DatasetNotFoundError(
            f"no SSL4EO-S12 split found at {root}: probed {schema.split_list_name('train')}, "
            f"{schema.split_list_name('val')} and {{train,val}}/<modality>/{schema.shard_name(1)} (a static host "
            "lists no folders; check the URL, or pass the files or a brace pattern)")
    out = []
    for s in splits:
        candidates = mods or list(schema.MODALITIES)
        terramesh = (None if distribution == CHUNKS
                     else _probe_terramesh(root, s, candidates, mods, storage_options, subsets))
        if terramesh:
            out += terramesh
            continue
        shard_mods = [] if distribution == CHUNKS else _probe_shards(root, s, candidates, storage_options)
        if shard_mods:
            if mods and len(shard_mods) < len(mods):
                missing = [m for m in mods if m not in shard_mods]
                raise DatasetNotFoundError(f"no shards of {missing} at {join(root, s)} "
                                           f"(probed <modality>/{schema.shard_name(1)})")
            first = join(root, s, shard_mods[0])
            guess = schema.SHARD_SPLITS.get(s, (None,))[0]
            def shard_exists(i: int, first: str = first) -> bool:
                return exists(join(first, schema.shard_name(i)), storage_options)

            n = count_by_probing(shard_exists, guess=guess, where=first)
            names = [schema.shard_name(i) for i in range(1, n + 1)]
            for m in shard_mods[1:]:
                if not exists(join(root, s, m, names[-1]), storage_options):
                    raise DatasetNotFoundError(f"{join(root, s, m, names[-1])} is missing: the modalities of {s} "
                                               f"hold different shard counts ({shard_mods[0]} has {n})")
            out += [ChunkSet(n_, s, {m: join(root, s, m, n_) for m in shard_mods}, SHARDS) for n_ in names]
            continue
        if distribution == SHARDS:
            raise DatasetNotFoundError(f"no shards at {join(root, s)} (probed <modality>/{schema.shard_name(1)})")
        names = split_file_names(root, s, storage_options)
        if not names:
            raise DatasetNotFoundError(f"split list {join(root, schema.split_list_name(s))} is empty")
        chunk_candidates = mods or list(schema.CHUNK_MODALITIES)
        present = [m for m in chunk_candidates if exists(join(root, s, m, names[0]), storage_options)]
        if not present or (mods and len(present) < len(mods)):
            raise DatasetNotFoundError(f"chunk file {names[0]} of split {s} not found under "
                                       f"{join(root, s)}/{{{','.join(chunk_candidates)}}}")
        out += [ChunkSet(n_, s, {m: join(root, s, m, n_) for m in present}, CHUNKS) for n_ in names]
    return out


# -- explicit files ----------------------------------------------------------------------------------------------

def _first_member_key(path: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The key of a shard's first member, from its first tar header (one small read), or ``None``."""
    from .shardfile import MEMBER_SUFFIX, first_header

    info = first_header(path, storage_options)
    if info is None:
        return None
    return info.name[: -len(MEMBER_SUFFIX)] if info.name.endswith(MEMBER_SUFFIX) else info.name


def corpus_of_files(files: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> schema.Corpus:
    """The corpus of shard files given one by one: by their names (a Major TOM shard is TerraMesh's), then by
    numbering and the members themselves: an ``ssl4eos12_shard_*`` numbered beyond SSL4EO-S12's published
    shards of its split (TerraMesh's SSL4EO-S12 shards are 000794..000889 train, 000009 val) is TerraMesh's when
    its first member has a TerraMesh key (``ssl4eos12_val_0080385``), not a 7-digit id (one small read)."""
    shards = [f for f in files if is_shard_file(f)]
    corpus = schema.detect_corpus([basename(f) for f in shards])
    if corpus is not schema.SSL4EO_S12:
        return corpus
    ranges = schema.SSL4EO_S12.subsets[0].ranges
    for f in shards:
        parsed = schema.parse_shard(basename(f))
        split = basename(parent(parent(f)))
        last = ranges[split][1] if split in ranges else max(r[1] for r in ranges.values())
        if parsed and parsed[0] == "ssl4eos12" and parsed[1] > last:
            key = _first_member_key(f, storage_options)
            if key is not None and not key.isdigit() and key.startswith("ssl4eos12_"):
                return schema.TERRAMESH
            return corpus
    return corpus


def _from_files(files: Sequence[str], mods: list[str] | None, storage_options: Mapping[str, Any] | None = None,
                corpus: schema.Corpus | None = None) -> list[ChunkSet]:
    if not files:
        raise DatasetNotFoundError("no chunk files or shards given")
    corpus = corpus or corpus_of_files(files, storage_options)
    sets = []
    for f in files:
        if not (is_chunk_file(f) or is_shard_file(f)):
            raise DatasetNotFoundError(f"{f} is neither a {SUFFIX} chunk file nor a {SHARD_SUFFIX} shard")
        kind = SHARDS if is_shard_file(f) else CHUNKS
        mod_dir = parent(f)
        own = basename(mod_dir)
        split_dir = parent(mod_dir)
        parsed = schema.parse_chunk_file_name(f)
        split_name = parsed[0] if parsed else (basename(split_dir) or None)
        known = own in schema.CHUNK_MODALITIES if kind == CHUNKS else bool(own)
        if not known:
            if mods and len(mods) > 1:
                raise DatasetNotFoundError(f"{f} is not inside a modality folder ({'/'.join(schema.CHUNK_MODALITIES)}), "
                                           "so its other modalities cannot be found")
            sets.append(ChunkSet(basename(f), split_name, {mods[0] if mods else "": f}, kind))
            continue
        use = mods or [schema.modality_name(own)]
        if kind == SHARDS:
            parsed = schema.parse_shard(basename(f))
            prefix = parsed[0] if parsed else None
            sub = corpus.subset(prefix) if prefix else None
            held = [m for m in use if sub is None or m in sub.modalities or schema.find_modality(m) is None]
            if held:
                sets.append(ChunkSet(basename(f), split_name, {m: join(split_dir, m, basename(f)) for m in held}, kind,
                                     prefix, corpus.name))
            continue
        sets.append(ChunkSet(basename(f), split_name, {m: join(split_dir, m, basename(f)) for m in use}, kind))
    return sets


#: Answers of the probes of the :func:`resolve` in progress (path -> exists), ``None`` outside one.
_PROBED: ContextVar[dict[str, bool] | None] = ContextVar("ssl4eo_zarr_probed", default=None)


def exists(path: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``path`` exists, a URL asked once per :func:`resolve` (its probes meet some names twice: a subset's
    first shard, a count's first guess; each is a round trip). Nothing outlives the call: the next one sees a
    host as it is then."""
    seen = _PROBED.get()
    if seen is None or not is_url(path):
        return _exists_now(path, storage_options)
    if path not in seen:
        seen[path] = _exists_now(path, storage_options)
    return seen[path]


def resolve(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    split: str | None = None,
    modalities: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    distribution: str | None = None,
    subsets: Sequence[str] | None = None,
) -> list[ChunkSet]:
    """File sets named by ``source``, all of one distribution (``ChunkSet.kind``).

    ``source`` is a dataset root (``ROOT``, with ``split`` choosing ``train``/``val``; all splits when omitted),
    a split folder (``ROOT/val``), a modality folder, one ``*.zarr.zip`` chunk file or ``*.tar`` shard, a list of
    them, or a brace pattern (``ROOT/val/S2L2A/ssl4eos12_shard_{000001..000005}.tar``); local paths or URLs.
    The other modalities of a file are found in the sibling modality folders. ``modalities`` defaults to every
    modality folder present (on a remote root: every known modality that answers). ``distribution``
    (``"chunks"``/``"shards"``) chooses where a root holds both. A TerraMesh root (``majortom_shard_*`` beside
    ``ssl4eos12_shard_*``) is found by its shard names too; ``subsets=["ssl4eos12"]`` keeps those shards only.
    Raises :class:`DatasetNotFoundError` naming what is missing.
    """
    token = _PROBED.set({})
    try:
        sets = _resolve(source, split, modalities, storage_options, distribution, subsets)
    finally:
        _PROBED.reset(token)
    if subsets is None:
        return sets
    have = {cs.subset for cs in sets}
    unknown = [s for s in subsets if s not in have]
    if unknown:
        what = f" holding {', '.join(modalities)}" if modalities else ""
        raise DatasetNotFoundError(f"no shards of subset(s) {unknown}{what} in {source} (found: "
                                   f"{', '.join(sorted(str(s) for s in have))})")
    return [cs for cs in sets if cs.subset in set(subsets)]


def _resolve(source: str | os.PathLike | Sequence[str | os.PathLike], split: str | None,
             modalities: Sequence[str] | None, storage_options: Mapping[str, Any] | None,
             distribution: str | None, subsets: Sequence[str] | None = None) -> list[ChunkSet]:
    mods = [schema.modality_name(m) for m in modalities] if modalities else None
    if distribution not in (None, CHUNKS, SHARDS):
        raise ValueError(f"distribution must be 'chunks', 'shards' or None, got {distribution!r}")
    parts = published_urls(source)
    if parts is not None:  # the published loader's urls: each part a subset's shards, maybe naming modalities
        out: list[ChunkSet] = []
        corpus = corpus_of_files([f for pattern, _n in parts for f in expand_braces(pattern)], storage_options)
        for pattern, names in parts:
            use = names if not mods else [m for m in mods if names is None or m in names]
            if use:
                out += _from_files(expand_braces(pattern), use, storage_options, corpus)
        if not out:
            raise DatasetNotFoundError(f"none of {mods} is among the modalities {source} names")
        return out
    if isinstance(source, str | os.PathLike):
        src = os.fspath(source)
        if _BRACE.search(src):
            return _from_files(expand_braces(src), mods, storage_options)
        if is_chunk_file(src) or is_shard_file(src):
            return _from_files([src], mods, storage_options)
        if is_url(src):
            return _resolve_url(src, split, mods, distribution, storage_options, subsets)
        return _resolve_local(src.removeprefix("file://"), split, mods, distribution)
    files = [f for p in source for f in expand_braces(os.fspath(p))]
    return _from_files(files, mods, storage_options)
