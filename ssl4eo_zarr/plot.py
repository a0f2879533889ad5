"""Quicklooks with matplotlib: the four seasons of a location (S2 RGB, S1 pseudo-colour, cloud classes) and
a world map of sample centres. Functions return a Figure; save it with ``fig.savefig(path)``."""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import schema
from .checks import sample_index
from .rgb import rgb_from_l2a
from .schema import CloudClass

#: dB ranges mapped to 0..1 for the S1 pseudo-colour (the report's Figure 1).
S1_VV_RANGE = (-30.0, 5.0)
S1_VH_RANGE = (-40.0, 0.0)


def _image(ds: xr.Dataset, name: str, i: int) -> np.ndarray | None:
    """``[T, C, H, W]`` of modality ``name`` for sample ``i``, or ``None`` when the Dataset lacks it."""
    if name not in ds.ssl4eo.modalities:
        return None
    return np.asarray(ds.ssl4eo.image(name).isel(sample=i).values)


def s1_pseudocolor(s1: np.ndarray) -> np.ndarray:
    """float ``[..., 2, H, W]`` (VV, VH in dB) -> float32 ``[..., H, W, 3]`` in 0..1: (VH, VV, VH), VV scaled
    -30..5 dB, VH -40..0 dB."""
    s1 = np.asarray(s1, dtype=np.float32)
    vv = np.clip((s1[..., 0, :, :] - S1_VV_RANGE[0]) / (S1_VV_RANGE[1] - S1_VV_RANGE[0]), 0, 1)
    vh = np.clip((s1[..., 1, :, :] - S1_VH_RANGE[0]) / (S1_VH_RANGE[1] - S1_VH_RANGE[0]), 0, 1)
    return np.nan_to_num(np.stack([vh, vv, vh], axis=-1))


def cloud_colormap():
    """(ListedColormap, BoundaryNorm) for SEnSeI classes 0..6."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap([schema.CLOUD_COLORS[c] for c in CloudClass])
    return cmap, BoundaryNorm(np.arange(-0.5, len(CloudClass) + 0.5), cmap.N)


def quicklook(ds: xr.Dataset, sample: int | str = 0):
    """Four-season grid of one location: rows S2 RGB, S1 (VH, VV, VH) pseudo-colour, SEnSeI cloud classes.

    ``ds`` is what :func:`ssl4eo_zarr.open_dataset` returns for a root/split (multi-modal) or for one S2RGB,
    S2L2A or S1GRD file. ``sample`` is an index or a 7-digit id. Returns a matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    i = sample_index(ds, sample)
    rgb = _image(ds, "S2RGB", i)
    if rgb is None and (l2a := _image(ds, "S2L2A", i)) is not None:
        rgb = rgb_from_l2a(l2a)
    s1 = _image(ds, "S1GRD", i)
    cloud = np.asarray(ds[schema.CLOUD_VAR].isel(sample=i).values) if schema.CLOUD_VAR in ds else None
    rows = [(label, data) for label, data in (("S2 RGB", rgb), ("S1 VH/VV/VH", s1), ("cloud classes", cloud))
            if data is not None]
    if not rows:
        raise ValueError("the Dataset holds none of S2RGB, S2L2A, S1GRD or cloud_mask")
    n_t = ds.sizes["time"]
    fig, axes = plt.subplots(len(rows), n_t, figsize=(2.6 * n_t, 2.7 * len(rows) + 0.6), squeeze=False)
    times = None
    for key in ("time_S2L2A", "time_S2RGB", "time_S2L1C", "time_"):
        if key in ds:
            times = np.asarray(ds[key].isel(sample=i).values)
            break
    cmap, norm = cloud_colormap()
    for r, (label, data) in enumerate(rows):
        for t in range(n_t):
            ax = axes[r, t]
            if label == "S2 RGB":
                ax.imshow(np.moveaxis(data[t], 0, -1))
            elif label.startswith("S1"):
                ax.imshow(s1_pseudocolor(data[t]))
            else:
                ax.imshow(data[t], cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(str(times[t])[:10] if times is not None else f"t={t}", fontsize=9)
            if t == 0:
                ax.set_ylabel(label, fontsize=9)
    if cloud is not None:
        handles = [Patch(facecolor=schema.CLOUD_COLORS[c], edgecolor="0.3", label=c.name.lower().replace("_", " "))
                   for c in CloudClass]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    sid = str(np.asarray(ds["sample"].values)[i])
    lat = float(ds["center_lat"].isel(sample=i)) if "center_lat" in ds else float("nan")
    lon = float(ds["center_lon"].isel(sample=i)) if "center_lon" in ds else float("nan")
    epsg = int(ds["crs"].isel(sample=i)) if "crs" in ds else 0
    fig.suptitle(f"location {sid}  ({lat:.3f}, {lon:.3f})  EPSG:{epsg}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if cloud is not None else 0, 1, 0.96))
    return fig


def plot_locations(ds, *, ax=None, s: float = 4.0):
    """World map (equirectangular, graticule, no basemap download) of sample centres coloured by split, as in
    the SSL4EO-S12 paper's Fig. 2. ``ds`` is an ``open_dataset`` result or a :func:`ssl4eo_zarr.read_metadata`
    table (which needs no image file at all). Returns the Figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 5.2))
    else:
        fig = ax.figure
    lat = np.asarray(ds["center_lat"].values, dtype=float)
    lon = np.asarray(ds["center_lon"].values, dtype=float)
    has_split = "split" in (ds.columns if hasattr(ds, "columns") else ds.coords)
    splits = np.asarray(ds["split"].values).astype(str) if has_split else np.full(lat.shape, "all")
    colors = {"train": "tab:blue", "val": "tab:orange"}
    for name in sorted(set(splits.tolist())):
        sel = splits == name
        ax.scatter(lon[sel], lat[sel], s=s, label=f"{name} ({int(sel.sum())})", color=colors.get(name), alpha=0.8)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 30))
    ax.set_yticks(range(-90, 91, 30))
    ax.grid(True, color="0.85", linewidth=0.6)
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set_aspect("equal")
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    ax.set_title("SSL4EO-S12 sample locations")
    ax.legend(loc="lower left", markerscale=3)
    return fig
