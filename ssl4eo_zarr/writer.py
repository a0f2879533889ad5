"""Write one modality chunk file exactly like the published ones.

The file is a Zarr format-2 hierarchy in a zip archive (members stored, not deflated, as zarr-python
2.18's ZipStore does), with consolidated metadata, one chunk per timestamp and zarr 2.18's default
compressor. Metadata JSON and chunk bytes are what xarray + zarr-python 2.18 write for the same Dataset,
whichever zarr-python is installed here; every member is written exactly once. The archive is built under
a temporary name beside the target and renamed into place, so a crash never leaves a half file under the
final name.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from . import schema
from .checks import dataset_problems, infer_modality
from .errors import SchemaError
from .schema import Modality
from .storage import atomic_write, is_url
from .zarrv2 import ArrayMeta, chunk_indices, dumps, encode_chunk

#: Zip entry timestamp: fixed so that the same arrays always give the same bytes (reproducible builds).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _encode_variable(var: xr.Variable) -> tuple[dict[str, Any], np.dtype]:
    """(attrs, stored dtype) of a variable, CF-encoded as xarray would for this format."""
    attrs = {k: v for k, v in var.attrs.items()}
    dtype = var.dtype
    if dtype.kind == "M":
        attrs.update(units=schema.TIME_UNITS, calendar="proleptic_gregorian")
        return attrs, np.dtype("<i8")
    if dtype.kind == "O":
        # Python strings become fixed-width unicode, as numpy gives for lists of str.
        width = max((len(str(v)) for v in np.asarray(var.values).ravel()), default=1)
        return attrs, np.dtype(f"<U{max(width, 1)}")
    return attrs, dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def _chunks_for(dims: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if d == "time" and len(dims) > 1 else (min(s, schema.SAMPLES_PER_FILE) if d == "sample" else s)
                 for d, s in zip(dims, shape))


def _as_numpy(data: Any, dtype: np.dtype) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype.kind == "M":
        arr = arr.astype("datetime64[ns]").view("<i8")
    return arr.astype(dtype, copy=False)


def encode_members(ds: xr.Dataset, *, compressor: Mapping[str, Any] | None = None):
    """Yield ``(member name, bytes)`` of the format-2 hierarchy for ``ds``, metadata first, ``.zmetadata`` last.

    Data is pulled one chunk at a time, so a dask-backed Dataset is never loaded whole.
    """
    order = [*schema.COORDS, schema.BANDS_VAR, schema.CLOUD_VAR, *schema.METADATA_VARS]
    codec = dict(compressor) if compressor is not None else dict(schema.DEFAULT_COMPRESSOR)
    if "id" not in codec:
        raise SchemaError(f"compressor config needs an 'id' (a numcodecs codec), got {codec}")
    consolidated: dict[str, Any] = {".zattrs": dict(ds.attrs), ".zgroup": {"zarr_format": 2}}
    yield ".zgroup", dumps({"zarr_format": 2})
    yield ".zattrs", dumps(dict(ds.attrs))
    names = [n for n in order if n in ds.variables] + [n for n in ds.variables if n not in order]
    for name in names:
        var = ds.variables[name]
        attrs, dtype = _encode_variable(var)
        attrs = {"_ARRAY_DIMENSIONS": list(var.dims), **attrs}
        meta = ArrayMeta(
            name=str(name),
            shape=tuple(var.shape),
            chunks=_chunks_for(tuple(str(d) for d in var.dims), var.shape),
            dtype=dtype,
            compressor=codec,
            filters=None,
            fill_value=np.nan if dtype.kind == "f" else None,
            attrs=attrs,
        )
        consolidated[f"{name}/.zarray"] = meta.zarray()
        consolidated[f"{name}/.zattrs"] = attrs
        yield f"{name}/.zarray", dumps(meta.zarray())
        yield f"{name}/.zattrs", dumps(attrs)
        if var.ndim == 0:
            yield f"{name}/0", encode_chunk(_as_numpy(var.values, dtype).reshape(()), meta)
            continue
        for index in chunk_indices(meta):
            region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, meta.chunks, meta.shape))
            block = _as_numpy(var[region].values, dtype)
            if block.shape != meta.chunks:  # edge chunks are stored full-size, padded with the fill value
                full = np.full(meta.chunks, meta.fill_value if meta.fill_value is not None else 0, dtype=dtype)
                full[tuple(slice(0, s) for s in block.shape)] = block
                block = full
            yield meta.chunk_key(index), encode_chunk(block, meta)
    yield ".zmetadata", dumps({"metadata": consolidated, "zarr_consolidated_format": 1})


def write_zip(fileobj, members, *, where: str = "archive") -> None:
    """Write ``(name, bytes)`` pairs as stored members into an open binary file; a name given twice is an error."""
    seen: set[str] = set()
    with zipfile.ZipFile(fileobj, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in members:
            if name in seen:
                raise ValueError(f"member {name!r} written twice to {where}")
            seen.add(name)
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)


def zip_bytes(members) -> bytes:
    """A whole zip archive in memory (for small per-location archives inside tar shards)."""
    buf = io.BytesIO()
    write_zip(buf, members)
    return buf.getvalue()


def write_members(path: str | os.PathLike, members, *, overwrite: bool = True) -> str:
    """Write ``(name, bytes)`` pairs into a new zip archive at ``path`` atomically; returns the path.

    Members are stored uncompressed (zarr 2.18 ZipStore's default; the chunks are already compressed).
    A member name given twice is an error rather than a duplicate entry.
    """
    target = os.fspath(path)
    if is_url(target):
        import fsspec

        with tempfile.TemporaryDirectory() as tmp:
            local = write_members(os.path.join(tmp, os.path.basename(target)), members)
            fs, remote = fsspec.core.url_to_fs(target)
            fs.put_file(local, remote)
        return target
    if not overwrite and os.path.exists(target):
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    with atomic_write(target) as fh:
        write_zip(fh, members, where=target)
    return target


def write_chunk(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    compressor: Mapping[str, Any] | None = None,
    modality: str | Modality | None = None,
    size: int | None = None,
    overwrite: bool = True,
) -> str:
    """Write one modality of one chunk (up to 64 locations x 4 timestamps) as a published-style ``.zarr.zip``.

    Parameters
    ----------
    ds:
        Dataset with ``bands`` ``[sample, time, band, y, x]`` in the modality's dtype (S2L1C/S2L2A int16 DN+1000,
        S1GRD float16 dB, S2RGB uint8), ``cloud_mask`` uint8 ``[sample, time, y, x]`` for S2 modalities,
        coordinates ``band``, ``sample`` (7-digit str), ``time`` (0..3), ``x``, ``y`` and the metadata
        variables ``center_lat``/``center_lon`` (float64, degrees), ``crs`` (int64 EPSG), ``x_``/``y_``
        (float64 ``[sample, x|y]``, UTM metres), ``file_id``/``sample_id`` (str ``[sample, time]``) and
        ``time_`` (datetime64[ns] ``[sample, time]``). Numpy- or dask-backed.
    path:
        Target file (local, or an fsspec URL: written locally, then uploaded).
    compressor:
        numcodecs config for every array; default zarr 2.18's ``Blosc(lz4, clevel=5, shuffle=1)``.
    modality:
        Checked against this modality; inferred from the band names when omitted.
    size:
        Expected patch edge in pixels (default 264; tests use smaller patches).

    Returns
    -------
    str
        The path written.

    Raises
    ------
    SchemaError
        ``ds`` does not follow the format; the message lists every problem.
    """
    mod = schema.get_modality(modality) if isinstance(modality, str) else modality or infer_modality(ds)
    problems = dataset_problems(ds, mod, size=size)
    if problems:
        raise SchemaError(f"cannot write {os.fspath(path)}: " + "; ".join(problems))
    return write_members(path, encode_members(ds, compressor=compressor), overwrite=overwrite)
