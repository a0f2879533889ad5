"""``ds.ssl4eo``: an xarray accessor on what :func:`ssl4eo_zarr.open_dataset` returns.

It works on both shapes of Dataset: a single modality file (``bands`` with a ``band`` dim) and the multi-modal
view (``S2L2A``, ``S1GRD``, ... with ``band_<MOD>`` dims). Nothing is cached on the accessor: every property is
derived from the Dataset when asked, so editing the Dataset never leaves stale state.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import schema
from .checks import infer_modality, sample_index
from .geo import grid_transform


def _band_dim(da: xr.DataArray) -> str:
    return next(str(d) for d in da.dims if str(d) == "band" or str(d).startswith("band_"))


@xr.register_dataset_accessor("ssl4eo")
class SSL4EOAccessor:
    """SSL4EO-S12 helpers: ``ds.ssl4eo.sample(i)``, ``.reflectance()``, ``.db()``, ``.cloud_fraction()``,
    ``.select(max_cloud=0.1)``, ``.rgb()``, ``.quicklook(i)``."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    # -- facts -----------------------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        """Modalities present (``["S2L2A"]`` for a single S2L2A file)."""
        ds = self._ds
        found = [m for m in schema.MODALITIES if m in ds.data_vars]
        if found:
            return found
        mod = infer_modality(ds) if schema.BANDS_VAR in ds else None
        return [mod.name] if mod else []

    def image(self, modality: str | None = None) -> xr.DataArray:
        """The image DataArray of ``modality`` (default: S2L2A, else the first present), stored units,
        ``[sample, time, band, y, x]``."""
        mods = self.modalities
        if not mods:
            raise ValueError("this Dataset holds no SSL4EO-S12 image variable")
        name = schema.get_modality(modality).name if modality else ("S2L2A" if "S2L2A" in mods else mods[0])
        if name not in mods:
            raise KeyError(f"modality {name} is not in this Dataset (it has {mods})")
        return self._ds[name] if name in self._ds.data_vars else self._ds[schema.BANDS_VAR].rename(name)

    # -- one location as a georeferenced raster ----------------------------------------------------------
    def sample(self, i: int | str, time: int | None = None, modality: str | None = None) -> xr.DataArray:
        """One location as a georeferenced DataArray: ``[time, band, y, x]`` or ``[band, y, x]`` with ``time``.

        ``x``/``y`` are the UTM pixel-centre coordinates in metres; the CRS (``EPSG:326zz/327zz``) and the affine
        transform are set with rioxarray, so ``.rio.to_raster("patch.tif")`` writes a correct GeoTIFF.
        ``i`` is an index or a 7-digit sample id.
        """
        import rioxarray  # noqa: F401 - registers .rio

        ds = self._ds
        i = sample_index(ds, i)
        img = self.image(modality).isel(sample=i)
        if time is not None:
            img = img.isel(time=time)
        x = np.asarray(ds["x_"].isel(sample=i).values, dtype=np.float64)
        y = np.asarray(ds["y_"].isel(sample=i).values, dtype=np.float64)
        epsg = int(ds["crs"].isel(sample=i).values)
        band = _band_dim(img)
        img = img.rename({band: "band"}).drop_vars([c for c in ("x", "y", "file", "split") if c in img.coords])
        img = img.assign_coords(x=("x", x), y=("y", y))
        img = img.rio.write_crs(f"EPSG:{epsg}").rio.write_transform(grid_transform(x, y))
        img.attrs.update(sample=str(ds["sample"].values[i]), center_lat=float(ds["center_lat"].isel(sample=i)),
                         center_lon=float(ds["center_lon"].isel(sample=i)))
        return img

    # -- unit conversions ------------------------------------------------------------------------------
    def reflectance(self, modality: str | None = None) -> xr.DataArray:
        """S2 reflectance, float32 in 0..1 (nominally): ``(DN - 1000) / 10000``. Lazy."""
        img = self.image(modality)
        mod = schema.get_modality(str(img.name))
        if mod.name not in ("S2L1C", "S2L2A"):
            raise ValueError(f"reflectance() needs S2L1C or S2L2A, not {mod.name}")
        out = (img.astype(np.float32) - np.float32(mod.offset)) / np.float32(schema.S2_SCALE)
        return out.assign_attrs(units="reflectance")

    def db(self) -> xr.DataArray:
        """S1 backscatter in dB as float32 (VV, VH). Lazy."""
        return self.image("S1GRD").astype(np.float32).assign_attrs(units="dB")

    def linear(self) -> xr.DataArray:
        """S1 backscatter as linear power ``10 ** (dB / 10)``, float32. Lazy."""
        return (10.0 ** (self.db() / 10.0)).astype(np.float32).assign_attrs(units="linear power")

    # -- clouds ----------------------------------------------------------------------------------------
    def cloud_fraction(self, classes=schema.CLOUDY_CLASSES) -> xr.DataArray:
        """Fraction of pixels in ``classes`` (thin and thick cloud) per sample and timestamp, float64 ``[sample, time]``.
        Lazy."""
        if schema.CLOUD_VAR not in self._ds:
            raise KeyError("this Dataset has no cloud_mask (S1GRD files carry none)")
        return self._ds[schema.CLOUD_VAR].isin([int(c) for c in classes]).mean(("y", "x")).rename("cloud_fraction")

    def select(self, max_cloud: float = 0.1, *, all_times: bool = True) -> xr.Dataset:
        """Locations whose cloud fraction is at most ``max_cloud`` in every timestamp (or in any, with
        ``all_times=False``). Computes the cloud fractions (reads ``cloud_mask``); the result stays lazy."""
        frac = self.cloud_fraction().compute()
        keep = (frac <= max_cloud).all("time") if all_times else (frac <= max_cloud).any("time")
        return self._ds.isel(sample=np.flatnonzero(keep.values))

    # -- the published metadata tables and seasonal order -------------------------------------------------
    def join_metadata(self, table) -> xr.Dataset:
        """This Dataset with the facts of a :func:`ssl4eo_zarr.read_metadata` table along ``sample``:
        ``cloud_cover`` float64 ``[sample, time]`` (fraction 0..1), ``s1_time``/``s2_time`` datetime64[ns]
        ``[sample, time]``, ``tile_id`` and ``tar`` ``[sample]``. Locations missing from the table get NaN/NaT."""
        ds = self._ds
        rows = table.reindex(np.asarray(ds["sample"].values).astype(str))
        n_t = schema.N_TIMESTAMPS

        def stack(prefix: str) -> np.ndarray:
            return np.stack([rows[f"{prefix}_{t}"].to_numpy() for t in range(n_t)], axis=1)

        out = ds.assign(
            cloud_cover=(("sample", "time"), stack("cloud").astype(np.float64)),
            s2_time=(("sample", "time"), stack("s2_time").astype("datetime64[ns]")),
            s1_time=(("sample", "time"), stack("s1_time").astype("datetime64[ns]")),
            tile_id=(("sample",), rows["tile_id"].astype(object).to_numpy()),
            tar=(("sample",), rows["tar"].astype(object).to_numpy()),
        )
        return out

    def reindex_seasonal(self) -> xr.Dataset:
        """Timestamps ordered by month of year instead of by date, per location (the published loader's
        ``reindex_seasonal``): position ``k`` of ``time`` holds the acquisition whose month comes k-th in the
        calendar year, for every variable with a ``time`` axis, following the reference S2 modality's times
        (``time_S2L2A`` ..., or ``time_`` of a single file). Reads those times; the images stay lazy."""
        from .timeorder import seasonal_order, take_time

        ds = self._ds
        ref = next((f"time_{m}" for m in schema.REFERENCE_ORDER if f"time_{m}" in ds), "time_")
        if ref not in ds:
            raise KeyError("no acquisition times (time_ / time_<MOD>) in this Dataset")
        order = seasonal_order(np.asarray(ds[ref].values).astype("datetime64[ns]").astype(np.int64))
        return take_time(ds, order)

    # -- display ---------------------------------------------------------------------------------------
    def rgb(self) -> xr.DataArray:
        """uint8 RGB ``[sample, time, rgb, y, x]``: the S2RGB modality when present, else made from S2L2A
        with :func:`ssl4eo_zarr.rgb.to_rgb` (lazily, per chunk)."""
        from .rgb import to_rgb

        if "S2RGB" in self.modalities:
            img = self.image("S2RGB")
            return img.rename({_band_dim(img): "rgb"})
        img = self.image("S2L2A")
        band = _band_dim(img)
        sel = img.sel({band: list(schema.RGB_SOURCE_BANDS)})
        out = xr.apply_ufunc(to_rgb, sel, input_core_dims=[[band, "y", "x"]], output_core_dims=[[band, "y", "x"]],
                             dask="parallelized", output_dtypes=[np.uint8])
        return out.rename({band: "rgb"}).assign_coords(rgb=["red", "green", "blue"]).rename("rgb")

    def quicklook(self, sample: int | str = 0):
        """:func:`ssl4eo_zarr.plot.quicklook` of this Dataset."""
        from .plot import quicklook

        return quicklook(self._ds, sample)
