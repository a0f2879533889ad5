"""Pure checks of a modality Dataset against the schema, shared by the writer and the validator, and the
lookup of a location in a Dataset, shared by the accessor and the plots.

Each check returns a list of human-readable problems; an empty list means the Dataset conforms.
Only metadata (dims, dtypes, coordinate values) is inspected here: no image data is loaded.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import schema
from .schema import Modality


def infer_modality(ds: xr.Dataset) -> Modality | None:
    """The modality whose band names equal ``ds.band``, or ``None``."""
    if "band" not in ds.coords:
        return None
    bands = tuple(str(b) for b in np.asarray(ds["band"].values))
    for mod in schema.MODALITIES.values():
        if mod.bands == bands:
            return mod
    return None


def _dtype_ok(actual: np.dtype, expected: str) -> bool:
    if expected == "str":
        return actual.kind in "UO"
    return actual == np.dtype(expected)


def dataset_problems(ds: xr.Dataset, modality: Modality | None = None, *, size: int | None = None) -> list[str]:
    """Every way ``ds`` departs from one SSL4EO-S12 v1.1 modality file.

    ``size`` is the expected patch edge (``schema.PATCH_SIZE`` unless a test writes smaller patches).
    """
    problems: list[str] = []
    mod = modality or infer_modality(ds)
    if mod is None:
        found = list(np.asarray(ds["band"].values)) if "band" in ds.coords else None
        return [f"band names {found} match no modality; expected one of "
                + "; ".join(f"{m.name}: {list(m.bands)}" for m in schema.MODALITIES.values())]
    if schema.BANDS_VAR not in ds:
        return [f"variable {schema.BANDS_VAR!r} is missing"]
    bands = ds[schema.BANDS_VAR]
    if bands.dims != schema.BANDS_DIMS:
        problems.append(f"{schema.BANDS_VAR!r} has dims {bands.dims}, expected {schema.BANDS_DIMS}")
        return problems
    if bands.dtype != mod.dtype:
        problems.append(f"{schema.BANDS_VAR!r} of {mod.name} is {bands.dtype}, expected {mod.dtype}")
    got_bands = tuple(str(b) for b in np.asarray(ds["band"].values))
    if got_bands != mod.bands:
        problems.append(f"band names {list(got_bands)} differ from {mod.name}'s {list(mod.bands)}")
    n = ds.sizes["sample"]
    if not 1 <= n <= schema.SAMPLES_PER_FILE:
        problems.append(f"{n} samples; a chunk file holds 1 to {schema.SAMPLES_PER_FILE}")
    if ds.sizes["time"] != schema.N_TIMESTAMPS:
        problems.append(f"{ds.sizes['time']} timestamps, expected {schema.N_TIMESTAMPS}")
    edge = size or schema.PATCH_SIZE
    if (ds.sizes["y"], ds.sizes["x"]) != (edge, edge):
        problems.append(f"patches are {ds.sizes['y']} x {ds.sizes['x']} px, expected {edge} x {edge}")
    if mod.has_cloud_mask and mod.name != "S2RGB":
        if schema.CLOUD_VAR not in ds:
            problems.append(f"{mod.name} needs {schema.CLOUD_VAR!r}")
    if schema.CLOUD_VAR in ds:
        cm = ds[schema.CLOUD_VAR]
        if cm.dims != schema.CLOUD_DIMS:
            problems.append(f"{schema.CLOUD_VAR!r} has dims {cm.dims}, expected {schema.CLOUD_DIMS}")
        if cm.dtype != np.uint8:
            problems.append(f"{schema.CLOUD_VAR!r} is {cm.dtype}, expected uint8")
        if not mod.has_cloud_mask:
            problems.append(f"{mod.name} files carry no {schema.CLOUD_VAR!r}")
    for name, (dims, dtype) in schema.METADATA_VARS.items():
        if name not in ds.variables:
            problems.append(f"variable {name!r} is missing")
            continue
        var = ds[name]
        if var.dims != dims:
            problems.append(f"{name!r} has dims {var.dims}, expected {dims}")
        if not _dtype_ok(var.dtype, dtype):
            problems.append(f"{name!r} is {var.dtype}, expected {dtype}")
    if "sample" in ds.coords:
        ids = [str(s) for s in np.asarray(ds["sample"].values)]
        bad = [s for s in ids if len(s) != schema.SAMPLE_ID_WIDTH or not s.isdigit()]
        if bad:
            problems.append(f"sample ids must be {schema.SAMPLE_ID_WIDTH} digits, found {bad[:3]}")
        if len(set(ids)) != len(ids):
            problems.append("sample ids repeat within the file")
    else:
        problems.append("coordinate 'sample' is missing")
    if "time" in ds.coords and list(np.asarray(ds["time"].values)) != list(range(ds.sizes["time"])):
        problems.append(f"coordinate 'time' must be 0..{ds.sizes['time'] - 1}")
    return problems


def sample_index(ds: xr.Dataset, sample: int | str) -> int:
    """Position of ``sample`` (an index, negative allowed, or a 7-digit id) along ``ds.sample``."""
    if isinstance(sample, str) and not sample.lstrip("-").isdigit():
        raise ValueError(f"sample must be an index or a 7-digit id, got {sample!r}")
    if isinstance(sample, str) and len(sample) == schema.SAMPLE_ID_WIDTH:
        hits = np.flatnonzero(np.asarray(ds["sample"].values).astype(str) == sample)
        if not hits.size:
            raise KeyError(f"sample {sample} is not in this Dataset")
        return int(hits[0])
    index, n = int(sample), ds.sizes["sample"]
    if not -n <= index < n:
        raise IndexError(f"sample index {index} is outside 0..{n - 1}")
    return index % n
