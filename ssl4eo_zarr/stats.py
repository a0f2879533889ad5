"""Per-band statistics over a whole split with dask, compared with the published normalisation statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr

from . import schema

#: Histogram bins per modality over its typical range (values outside go to the end bins' overflow counts).
DEFAULT_BINS = 100


@dataclass
class BandStats:
    """Statistics of one modality: float64 ``[C]`` mean/std/min/max in stored units, ``counts`` int64 ``[C, bins]``
    over ``edges`` float64 ``[bins + 1]``, ``below``/``above`` int64 ``[C]`` outside the edges, ``n`` values per band."""

    modality: str
    bands: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    counts: np.ndarray
    edges: np.ndarray
    below: np.ndarray
    above: np.ndarray
    n: int

    def compare(self) -> str:
        """A table of measured vs published mean and std per band."""
        pub_mean, pub_std = schema.get_modality(self.modality).stats()
        lines = [f"{self.modality}: {self.n} values per band",
                 f"{'band':>5} {'mean':>10} {'published':>10} {'std':>10} {'published':>10}"]
        for b, m, pm, s, ps in zip(self.bands, self.mean, pub_mean, self.std, pub_std):
            lines.append(f"{b:>5} {m:10.3f} {pm:10.3f} {s:10.3f} {ps:10.3f}")
        return "\n".join(lines)


def _image(ds: xr.Dataset, modality: str) -> xr.DataArray:
    if modality in ds.data_vars:
        return ds[modality]
    return ds[schema.BANDS_VAR]


def band_stats(ds: xr.Dataset, modalities: list[str] | None = None, *, bins: int = DEFAULT_BINS,
               progress: bool = False) -> dict[str, BandStats]:
    """Per-band mean, std, min, max and histogram of each modality over every sample, timestamp and pixel.

    Runs as one dask computation (a chunk is read once for all statistics), on the active scheduler: a
    ``distributed.Client`` if one exists, threads otherwise. ``ds`` is what :func:`open_dataset` returns.
    """
    mods = modalities or ds.ssl4eo.modalities
    graphs = {}
    for m in mods:
        mod = schema.get_modality(m)
        img = _image(ds, mod.name).data
        if not isinstance(img, da.Array):
            img = da.from_array(img, chunks=(-1, 1, -1, -1, -1))
        x = img.astype(np.float64)
        axes = (0, 1, 3, 4)
        lo, hi = mod.valid_range
        edges = np.linspace(lo, hi, bins + 1)
        counts = da.stack([da.histogram(img[:, :, c], bins=edges)[0] for c in range(mod.n_bands)])
        graphs[mod.name] = dict(
            s=x.sum(axis=axes), ss=(x * x).sum(axis=axes), mn=img.min(axis=axes), mx=img.max(axis=axes),
            below=(img < lo).sum(axis=axes), above=(img > hi).sum(axis=axes), counts=counts,
        )
        graphs[mod.name]["edges"] = edges
    lazy = {m: {k: v for k, v in g.items() if k != "edges"} for m, g in graphs.items()}
    if progress:
        results = _compute_with_progress(lazy)
    else:
        (results,) = dask.compute(lazy)
    out = {}
    for m, r in results.items():
        mod = schema.get_modality(m)
        img = _image(ds, m)
        n = math.prod(int(img.sizes[d]) for d in img.dims if not str(d).startswith("band"))
        mean = r["s"] / n
        var = np.maximum(r["ss"] / n - mean**2, 0.0)
        out[m] = BandStats(m, mod.bands, mean, np.sqrt(var), np.asarray(r["mn"], np.float64),
                           np.asarray(r["mx"], np.float64), np.asarray(r["counts"]), graphs[m]["edges"],
                           np.asarray(r["below"]), np.asarray(r["above"]), n)
    return out


def _compute_with_progress(lazy):
    try:
        from distributed import get_client, progress

        client = get_client()
    except (ImportError, ValueError):
        client = None
    if client is not None:
        futures = client.compute(lazy)
        progress(futures)
        return futures.result()
    from dask.diagnostics import ProgressBar

    with ProgressBar():
        (results,) = dask.compute(lazy)
    return results
