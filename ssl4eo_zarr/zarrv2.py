"""Zarr format 2 metadata and chunk coding, independent of the installed zarr-python.

The format-2 spec (https://zarr-specs.readthedocs.io/en/latest/v2/v2.0.html) is small: JSON metadata
(``.zgroup``, ``.zattrs``, ``<array>/.zarray``, consolidated into ``.zmetadata``) and one blob per chunk,
compressed with a numcodecs codec. Reading and writing it here, with numcodecs doing the compression,
gives byte-identical files and identical decoding under zarr-python 2.18 and 3.x, lets the loader decode
straight into preallocated buffers, and lets every size be checked before anything is allocated.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numcodecs
import numpy as np

from .errors import CorruptFileError, UnsafeFileError
from .storage import ScratchBuffer, ZipArchive

#: Refuse arrays whose declared decoded size exceeds this (decompression-bomb / absurd-shape guard).
MAX_ARRAY_BYTES = 64 << 30
#: Refuse chunks whose decoded size exceeds this.
MAX_CHUNK_BYTES = 2 << 30


def dumps(obj: Any) -> bytes:
    """JSON exactly as zarr-python 2.18 writes metadata (4-space indent, sorted keys, ASCII)."""
    return json.dumps(obj, indent=4, sort_keys=True, ensure_ascii=True, separators=(",", ": ")).encode("ascii")


def encode_fill_value(value: Any, dtype: np.dtype) -> Any:
    """Fill value as zarr 2.18 stores it in JSON (``"NaN"``, ``"Infinity"``, base64 for bytes)."""
    if value is None:
        return None
    if dtype.kind == "f":
        value = float(value)
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if dtype.kind in "iu":
        return int(value)
    if dtype.kind == "b":
        return bool(value)
    if dtype.kind == "S":
        return base64.standard_b64encode(bytes(value)).decode("ascii")
    return value


def decode_fill_value(value: Any, dtype: np.dtype) -> Any:
    if value is None:
        return None
    if dtype.kind == "f":
        return {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}.get(value, value)
    if dtype.kind == "S" and isinstance(value, str):
        return base64.standard_b64decode(value)
    return value


@dataclass(frozen=True)
class ArrayMeta:
    """One array of a format-2 group: its ``.zarray`` and ``.zattrs``."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    compressor: dict[str, Any] | None
    filters: tuple[dict[str, Any], ...] | None
    fill_value: Any
    order: str = "C"
    dimension_separator: str = "."
    attrs: dict[str, Any] = field(default_factory=dict)

    # Cached: opening a 3,812-file split asks these hundreds of thousands of times.
    @functools.cached_property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.attrs.get("_ARRAY_DIMENSIONS", [f"dim_{i}" for i in range(len(self.shape))]))

    @functools.cached_property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each dimension."""
        return tuple(math.ceil(s / c) if c else 0 for s, c in zip(self.shape, self.chunks))

    @functools.cached_property
    def pipeline(self) -> tuple[list, Any]:
        """(filters, compressor) as numcodecs objects."""
        filters = [_codec(json.dumps(f, sort_keys=True)) for f in self.filters or ()]
        compressor = _codec(json.dumps(self.compressor, sort_keys=True)) if self.compressor else None
        return filters, compressor

    @functools.cached_property
    def chunk_nbytes(self) -> int:
        return math.prod(self.chunks) * self.dtype.itemsize

    def chunk_key(self, index: tuple[int, ...]) -> str:
        if not index:
            return f"{self.name}/0"
        return f"{self.name}/" + self.dimension_separator.join(str(i) for i in index)

    def zarray(self) -> dict[str, Any]:
        """The ``.zarray`` document."""
        doc = {
            "chunks": list(self.chunks),
            "compressor": self.compressor,
            "dtype": _dtype_str(self.dtype),
            "fill_value": encode_fill_value(self.fill_value, self.dtype),
            "filters": list(self.filters) if self.filters is not None else None,
            "order": self.order,
            "shape": list(self.shape),
            "zarr_format": 2,
        }
        if self.dimension_separator != ".":
            doc["dimension_separator"] = self.dimension_separator
        return doc

    @classmethod
    def from_json(cls, name: str, zarray: dict[str, Any], zattrs: dict[str, Any] | None, *, path: str = "") -> ArrayMeta:
        try:
            dtype = np.dtype(zarray["dtype"] if not isinstance(zarray["dtype"], list) else [tuple(f) for f in zarray["dtype"]])
            shape = tuple(int(s) for s in zarray["shape"])
            chunks = tuple(int(c) for c in zarray["chunks"])
            meta = cls(
                name=name,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                compressor=zarray.get("compressor"),
                filters=tuple(zarray["filters"]) if zarray.get("filters") else None,
                fill_value=decode_fill_value(zarray.get("fill_value"), dtype),
                order=zarray.get("order", "C"),
                dimension_separator=zarray.get("dimension_separator") or ".",
                attrs=dict(zattrs or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(path, f"invalid array metadata: {exc!r}", member=f"{name}/.zarray") from None
        meta.check(path)
        return meta

    def check(self, path: str = "") -> None:
        """Refuse absurd metadata before anything is allocated."""
        where = f"{self.name}/.zarray"
        if len(self.shape) != len(self.chunks) or any(s < 0 for s in self.shape) or any(c <= 0 for c in self.chunks):
            raise UnsafeFileError(path, f"shape {self.shape} and chunks {self.chunks} do not fit", member=where)
        if self.dtype.itemsize == 0 and self.dtype != np.dtype(object):
            raise UnsafeFileError(path, f"zero-size dtype {self.dtype}", member=where)
        itemsize = max(self.dtype.itemsize, 1)
        if math.prod(self.shape) * itemsize > MAX_ARRAY_BYTES:
            raise UnsafeFileError(path, f"declared shape {self.shape} of {self.dtype} is absurdly large", member=where)
        if math.prod(self.chunks) * itemsize > MAX_CHUNK_BYTES:
            raise UnsafeFileError(path, f"declared chunks {self.chunks} are absurdly large", member=where)
        if self.order not in ("C", "F"):
            raise CorruptFileError(path, f"unknown memory order {self.order!r}", member=where)
        if len(self.dims) != len(self.shape):
            raise CorruptFileError(path, f"_ARRAY_DIMENSIONS {self.dims} does not match shape {self.shape}",
                                   member=f"{self.name}/.zattrs")


def _dtype_str(dtype: np.dtype) -> Any:
    if dtype == np.dtype(object):
        return "|O"
    if dtype.fields and dtype.names:
        return [[n, _dtype_str(dtype.fields[n][0])] for n in dtype.names]
    return dtype.str


@dataclass(frozen=True)
class GroupMeta:
    """A format-2 group: its attributes and arrays, from one archive. Read-only (the mappings are proxies),
    since one parse serves every file whose ``.zmetadata`` has the same bytes."""

    attrs: Mapping[str, Any]
    arrays: Mapping[str, ArrayMeta]
    consolidated: bool
    #: The ``.zmetadata`` bytes this group was parsed from (``None`` when read member by member): carried by
    #: the group itself, since the parse cache below is cleared when it grows, possibly between a file's open
    #: and the split index recording it.
    raw: bytes | None = field(default=None, repr=False, compare=False)

    def __reduce__(self):  # the read-only proxies do not pickle; their contents do
        return _group_meta, (dict(self.attrs), dict(self.arrays), self.consolidated, self.raw)


def _group_meta(attrs: dict[str, Any], arrays: dict[str, ArrayMeta], consolidated: bool,
                raw: bytes | None = None) -> GroupMeta:
    return GroupMeta(MappingProxyType(attrs), MappingProxyType(arrays), consolidated, raw)


_GROUP_CACHE: dict[bytes, GroupMeta] = {}


def read_group(archive: ZipArchive) -> GroupMeta:
    """Metadata of the root group of ``archive``: consolidated ``.zmetadata`` when present, else each member.

    Files of one modality usually carry byte-identical ``.zmetadata``; its parse is reused (the result is
    immutable), which makes opening thousands of files cheaper.
    """
    if ".zmetadata" in archive:
        return parse_group(archive.read(".zmetadata", max_bytes=64 << 20), archive.path)
    names = archive.names()
    meta = {}
    for name in names:
        if name.rsplit("/", 1)[-1] in (".zarray", ".zattrs", ".zgroup"):
            try:
                meta[name] = json.loads(archive.read(name, max_bytes=16 << 20))
            except ValueError as exc:
                raise CorruptFileError(archive.path, f"invalid JSON: {exc}", member=name) from None
    return _group_from(meta, archive.path, consolidated=False)


def parse_group(raw: bytes, path: str = "") -> GroupMeta:
    """A group from the bytes of its ``.zmetadata`` (parsed once per distinct content)."""
    cached = _GROUP_CACHE.get(raw)
    if cached is not None:
        return cached
    try:
        meta = json.loads(raw)["metadata"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(path, f"invalid consolidated metadata: {exc!r}", member=".zmetadata") from None
    raw = bytes(raw)
    group = _group_from(meta, path, consolidated=True, raw=raw)
    if len(_GROUP_CACHE) > 64:
        _GROUP_CACHE.clear()
    _GROUP_CACHE[raw] = group
    return group


def _group_from(meta: dict[str, Any], path: str, *, consolidated: bool, raw: bytes | None = None) -> GroupMeta:
    if ".zgroup" not in meta:
        raise CorruptFileError(path, "no zarr format-2 group at the archive root (.zgroup missing)")
    arrays = {}
    for key, zarray in meta.items():
        if not key.endswith("/.zarray"):
            continue
        name = key[: -len("/.zarray")]
        if "/" in name:
            continue  # nested groups are not part of this format
        arrays[name] = ArrayMeta.from_json(name, zarray, meta.get(f"{name}/.zattrs"), path=path)
    return GroupMeta(attrs=MappingProxyType(dict(meta.get(".zattrs", {}))), arrays=MappingProxyType(arrays),
                     consolidated=consolidated, raw=raw)


@functools.lru_cache(maxsize=64)
def _codec(config: str):
    return numcodecs.get_codec(json.loads(config))


def _codec_pipeline(meta: ArrayMeta):
    return meta.pipeline


def _check_blosc_size(raw: bytes | memoryview, expected: int, archive_path: str, key: str) -> None:
    # The 16-byte blosc header (stable since blosc 1.0) states decoded and compressed sizes: check them
    # before decompressing anything, so a crafted chunk cannot make us allocate more than .zarray declares.
    if len(raw) < 16:
        raise CorruptFileError(archive_path, f"chunk of {len(raw)} bytes is too short for blosc", member=key)
    nbytes, _blocksize, cbytes = struct.unpack_from("<III", raw, 4)
    if cbytes != len(raw):
        raise CorruptFileError(archive_path, f"blosc header says {cbytes} compressed bytes, member holds {len(raw)}",
                               member=key)
    if nbytes != expected:
        raise UnsafeFileError(
            archive_path, f"chunk decodes to {nbytes} bytes, its .zarray declares {expected}", member=key
        )


def decode_chunk(raw: bytes | memoryview, meta: ArrayMeta, *, out: np.ndarray | None = None, path: str = "",
                 key: str = "") -> np.ndarray:
    """Decode one stored chunk of ``meta`` into an array of shape ``meta.chunks``.

    With ``out`` (a C-contiguous array of ``meta.chunks`` and ``meta.dtype``, e.g. a slice of a shared batch
    buffer) blosc decodes straight into it without an intermediate copy. Sizes are checked against the
    metadata before anything is decompressed.
    """
    filters, compressor = _codec_pipeline(meta)
    expected = meta.chunk_nbytes
    data: Any
    try:
        if compressor is not None and compressor.codec_id == "blosc" and not filters and meta.dtype != object:
            _check_blosc_size(raw, expected, path, key)
            if out is not None and meta.order == "C":
                compressor.decode(raw, out=out.reshape(-1).view(np.uint8))
                return out
            data = np.frombuffer(compressor.decode(raw), dtype=meta.dtype)
        else:
            data = compressor.decode(raw) if compressor is not None else raw
            for flt in reversed(filters):
                data = flt.decode(data)
            if meta.dtype == object:
                data = np.asarray(data, dtype=object)
            else:
                buf = np.frombuffer(memoryview(data).cast("B") if not isinstance(data, np.ndarray) else data.view(np.uint8),
                                    dtype=np.uint8)
                if buf.nbytes != expected:
                    raise UnsafeFileError(path, f"chunk decodes to {buf.nbytes} bytes, its .zarray declares {expected}",
                                          member=key)
                data = buf.view(meta.dtype)
    except (CorruptFileError, UnsafeFileError):
        raise
    except Exception as exc:  # noqa: BLE001 - every codec has its own error types
        raise CorruptFileError(path, f"cannot decode chunk: {exc}", member=key) from None
    if data.size != math.prod(meta.chunks):
        raise CorruptFileError(path, f"chunk holds {data.size} values, expected {math.prod(meta.chunks)}", member=key)
    data = data.reshape(meta.chunks, order="F" if meta.order == "F" else "C")
    if out is not None:
        out[...] = data
        return out
    return data


def encode_chunk(chunk: np.ndarray, meta: ArrayMeta) -> bytes:
    """Encode one full chunk (shape ``meta.chunks``) exactly as zarr-python 2.18 would."""
    filters, compressor = _codec_pipeline(meta)
    data: Any = np.ascontiguousarray(chunk) if meta.order == "C" else np.asfortranarray(chunk)
    for flt in filters:
        data = flt.encode(data)
    if compressor is not None:
        data = compressor.encode(data)
    return bytes(data) if not isinstance(data, bytes) else data


def chunk_indices(meta: ArrayMeta) -> list[tuple[int, ...]]:
    """Every chunk index of ``meta`` in C order."""
    return [tuple(int(i) for i in idx) for idx in np.ndindex(*meta.grid)] if meta.shape else [()]


def _check_no_stray_chunks(archive: ZipArchive, meta: ArrayMeta) -> None:
    """A chunk absent from the directory is the fill value (zarr may skip empty chunks), unless the directory
    is damaged: a member that is neither metadata nor a chunk key of an array with a ``.zarray`` means a name
    was altered, hiding a real chunk behind it."""
    names = archive.names()
    present = set(names)
    valid = {meta.chunk_key(i) for i in chunk_indices(meta)}
    for name in names:
        head, _, tail = name.rpartition("/")
        if tail.startswith("."):
            continue
        if f"{head}/.zarray" not in present or (head == meta.name and name not in valid):
            raise CorruptFileError(archive.path, f"member {name!r} is no chunk of any array: the zip directory is "
                                                 "damaged", member=name)


def read_chunk(archive: ZipArchive, meta: ArrayMeta, index: tuple[int, ...], *, out: np.ndarray | None = None,
               scratch: ScratchBuffer | None = None) -> np.ndarray:
    """Chunk ``index`` of ``meta`` from ``archive`` (full chunk shape); a missing chunk is the fill value.

    With ``scratch`` the compressed bytes are read into that reusable buffer instead of a new ``bytes``.
    """
    key = meta.chunk_key(index)
    if key not in archive:
        _check_no_stray_chunks(archive, meta)
        if meta.fill_value is None:  # no fill value: the chunk must exist, or the file lost it
            raise CorruptFileError(archive.path, "chunk member is missing and the array has no fill value", member=key)
        chunk = out if out is not None else np.empty(meta.chunks, dtype=meta.dtype)
        chunk[...] = meta.fill_value
        return chunk
    limit = meta.chunk_nbytes + 1024 + meta.chunk_nbytes // 16 if meta.dtype != object else 1 << 30
    raw = archive.read_into(key, scratch, max_bytes=limit) if scratch is not None else archive.read(key, max_bytes=limit)
    return decode_chunk(raw, meta, out=out, path=archive.path, key=key)


def read_region(archive: ZipArchive, meta: ArrayMeta, region: tuple[slice, ...]) -> np.ndarray:
    """``array[region]`` for ``region`` of one slice per dimension (steps of 1), reading only the chunks it touches."""
    if not meta.shape:
        return read_chunk(archive, meta, ()).reshape(())
    starts = [0 if s.start is None else s.start for s in region]
    stops = [dim if s.stop is None else s.stop for s, dim in zip(region, meta.shape)]
    out = np.empty([b - a for a, b in zip(starts, stops)], dtype=meta.dtype)
    ranges = [range(a // c, (b - 1) // c + 1) if b > a else range(0) for a, b, c in zip(starts, stops, meta.chunks)]
    for index in np.ndindex(*[len(r) for r in ranges]):
        cidx = tuple(r[i] for r, i in zip(ranges, index))
        chunk = read_chunk(archive, meta, cidx)
        src, dst = [], []
        for ci, c, a, b in zip(cidx, meta.chunks, starts, stops):
            lo, hi = max(ci * c, a), min((ci + 1) * c, b)
            src.append(slice(lo - ci * c, hi - ci * c))
            dst.append(slice(lo - a, hi - a))
        out[tuple(dst)] = chunk[tuple(src)]
    return out


def read_array(archive: ZipArchive, meta: ArrayMeta) -> np.ndarray:
    """The whole array ``meta`` as numpy."""
    if meta.shape and all(g == 1 for g in meta.grid):  # one chunk (coordinates, small metadata)
        return read_chunk(archive, meta, (0,) * len(meta.shape))[tuple(slice(0, s) for s in meta.shape)]
    return read_region(archive, meta, tuple(slice(None) for _ in meta.shape))
