"""The dataset's published GeoParquet metadata tables, read into one documented layout.

Two generations exist:

* first release, ``splits/{split}_metadata.parquet``: one row per location **and timestamp**, index
  ``<sample>_<t>``, columns ``sample_id``, ``time_id`` (0..3), ``time``, ``tile_id`` (MGRS), ``geometry``
  (footprint, EPSG:4326), ``tile_crs`` (EPSG), ``file`` (chunk file name);
* 2026 release, ``{split}_metadata.parquet``: one row per **location**: ``tar``, ``zarr``, ``sample_id``,
  ``split``, ``center_lon``, ``center_lat``, ``crs``, ``bounds``, ``geometry``, then four S2 times, four S1 times
  and four cloud-cover fractions. Their names are matched by meaning (see :func:`match_time_columns`).

:func:`read_metadata` returns both as a GeoDataFrame with one row per location, indexed by ``sample``
(7-digit id), with the columns of :data:`COLUMNS` (missing facts as NaN/NaT/None). :func:`select` filters it
by cloud fraction, bounding box, date, tile or split without opening a single image; the result can be handed
to ``ChunkDataset(samples=...)`` or joined to an ``open_dataset`` result with ``ds.ssl4eo.join_metadata``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import schema
from .storage import is_url, read_bytes

#: The columns of :func:`read_metadata`, in order: name -> meaning.
COLUMNS: dict[str, str] = {
    "split": "train / val (from the table, else the chunk file name)",
    "file": "chunk file name (first release) or None",
    "tar": "WebDataset shard name (2026 release) or None",
    "center_lon": "patch centre, degrees",
    "center_lat": "patch centre, degrees",
    "crs": "EPSG code of the UTM zone",
    "tile_id": "MGRS tile of the first timestamp (first release) or None",
    **{f"s2_time_{t}": f"S2 acquisition time of timestamp {t}, datetime64[ns]" for t in range(4)},
    **{f"s1_time_{t}": f"S1 acquisition time of timestamp {t}, datetime64[ns] (NaT in the first release)"
       for t in range(4)},
    **{f"cloud_{t}": f"cloud-cover fraction 0..1 of timestamp {t} (NaN in the first release)" for t in range(4)},
    "geometry": "footprint polygon, EPSG:4326",
}

_SEASONS = {"spring": 0, "summer": 1, "autumn": 2, "fall": 2, "winter": 3}


def _index_of(name: str) -> int | None:
    low = name.lower()
    for word, t in _SEASONS.items():
        if word in low:
            return t
    digits = re.findall(r"\d+", low.replace("s1", "").replace("s2", ""))
    return int(digits[-1]) if digits else None


def match_time_columns(columns: Sequence[str]) -> dict[str, str]:
    """Canonical name (``s2_time_t``, ``s1_time_t``, ``cloud_t``) -> column of the table, matched by meaning.

    Accepted: a column naming the sensor (``s2``/``S2``, ``s1``/``S1``) and a time (``time``, ``date``,
    ``datetime``, ``acq``), or naming cloud (``cloud``, ``cc``), with the timestamp as its last number (0..3, or
    1..4 when all four are numbered so) or a season word (spring, summer, autumn/fall, winter). Examples:
    ``S2_time_0``, ``s1_date_3``, ``cloud_cover_2``, ``cloud_fraction_t1``, ``s2_acq_winter``.
    """
    found: dict[str, dict[int, str]] = {"s2_time": {}, "s1_time": {}, "cloud": {}}
    for col in columns:
        low = str(col).lower()
        if low in ("time", "time_id", "sample_id", "tile_id", "tile_crs"):
            continue
        t = _index_of(low)
        if t is None:
            continue
        timeish = any(w in low for w in ("time", "date", "acq"))
        if "cloud" in low or re.search(r"(^|_)cc(_|\d|$)", low):
            found["cloud"][t] = col
        elif timeish and "s2" in low:
            found["s2_time"][t] = col
        elif timeish and "s1" in low:
            found["s1_time"][t] = col
    out = {}
    for kind, by_t in found.items():
        if sorted(by_t) == [1, 2, 3, 4]:
            by_t = {t - 1: c for t, c in by_t.items()}
        for t, col in by_t.items():
            if 0 <= t < schema.N_TIMESTAMPS:
                out[f"{kind}_{t}"] = col
    return out


def _read_parquet(path: str, storage_options: Mapping[str, Any] | None) -> Any:
    import geopandas as gpd

    if not is_url(path):
        return gpd.read_parquet(path)
    import io

    # One whole read (the table is tens of MB): plain HTTP(S) needs no fsspec extra, and retries apply.
    return gpd.read_parquet(io.BytesIO(read_bytes(path, storage_options)))


def _sample_of(values: Any) -> np.ndarray:
    return np.array([schema.sample_id(str(v).split("_")[0]) for v in values])


def _split_of(names: Any) -> list[str | None]:
    out = []
    for n in names:
        parsed = schema.parse_chunk_file_name(str(n)) if n is not None else None
        out.append(parsed[0] if parsed else None)
    return out


def _first_release(table: Any) -> Any:
    import geopandas as gpd
    import pandas as pd

    ids = table["sample_id"] if "sample_id" in table.columns else pd.Series(table.index, index=table.index)
    df = table.assign(sample=_sample_of(ids.values), time_id=table["time_id"].astype(int))
    first = df.sort_values("time_id", kind="stable").groupby("sample", sort=False).first()  # table order kept
    times = df.pivot_table(index="sample", columns="time_id", values="time", aggfunc="first").reindex(first.index)
    out = pd.DataFrame(index=pd.Index(first.index, name="sample"))
    out["file"] = first["file"] if "file" in first else None
    out["split"] = _split_of(out["file"]) if "file" in first else None
    out["tar"] = None
    geometry = gpd.GeoSeries(first["geometry"], crs=table.crs or "EPSG:4326")
    centroid = np.array([(g.centroid.x, g.centroid.y) if g is not None else (np.nan, np.nan) for g in geometry])
    out["center_lon"], out["center_lat"] = centroid[:, 0], centroid[:, 1]
    out["crs"] = first["tile_crs"].astype("int64") if "tile_crs" in first else 0
    out["tile_id"] = first["tile_id"] if "tile_id" in first else None
    for t in range(schema.N_TIMESTAMPS):
        out[f"s2_time_{t}"] = pd.to_datetime(times[t]) if t in times.columns else pd.NaT
        out[f"s1_time_{t}"] = pd.NaT
        out[f"cloud_{t}"] = np.nan
    return gpd.GeoDataFrame(out, geometry=geometry.values, crs=geometry.crs)


def _second_release(table: Any) -> Any:
    import geopandas as gpd
    import pandas as pd

    matched = match_time_columns(list(table.columns))
    out = pd.DataFrame(index=pd.Index(_sample_of(table["sample_id"].values), name="sample"))
    out["split"] = table["split"].astype(str).values if "split" in table.columns else None
    out["file"] = table["file"].values if "file" in table.columns else None
    out["tar"] = table["tar"].astype(str).values if "tar" in table.columns else None
    for name in ("center_lon", "center_lat"):
        out[name] = table[name].astype(float).values
    out["crs"] = table["crs"].astype("int64").values if "crs" in table.columns else 0
    out["tile_id"] = table["tile_id"].values if "tile_id" in table.columns else None
    for t in range(schema.N_TIMESTAMPS):
        for kind in ("s2_time", "s1_time"):
            col = matched.get(f"{kind}_{t}")
            out[f"{kind}_{t}"] = pd.to_datetime(table[col].values) if col else pd.NaT
        col = matched.get(f"cloud_{t}")
        out[f"cloud_{t}"] = table[col].astype(float).values if col else np.nan
    return gpd.GeoDataFrame(out, geometry=table.geometry.values, crs=table.crs or "EPSG:4326")


def read_metadata(path: str, *, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A published metadata table (either generation), local or URL, as one row per location.

    Returns
    -------
    geopandas.GeoDataFrame
        Index ``sample`` (7-digit str); columns :data:`COLUMNS` in that order: ``split``, ``file``, ``tar``,
        ``center_lon``/``center_lat`` (float64 degrees), ``crs`` (int64 EPSG), ``tile_id``,
        ``s2_time_0..3`` and ``s1_time_0..3`` (datetime64[ns]), ``cloud_0..3`` (float64, 0..1), ``geometry``
        (footprint, EPSG:4326).
    """
    table = _read_parquet(path, storage_options)
    out = _first_release(table) if "time_id" in table.columns else _second_release(table)
    return out[list(COLUMNS)]


def select(table: Any, *, max_cloud: float | None = None, all_times: bool = True,
           bbox: tuple[float, float, float, float] | None = None, start: Any = None, end: Any = None,
           tiles: Sequence[str] | None = None, split: str | None = None) -> Any:
    """Rows of a :func:`read_metadata` table that pass every filter given.

    ``max_cloud``: cloud fraction at most this in every timestamp (``all_times``) or in at least one; unknown
    fractions (NaN) never pass. ``bbox``: ``(min_lon, min_lat, max_lon, max_lat)`` containing the centre.
    ``start``/``end``: every S2 time within (inclusive). ``tiles``: MGRS tile ids. ``split``: train/val.
    """
    import pandas as pd

    keep = np.ones(len(table), dtype=bool)
    if max_cloud is not None:
        cloud = table[[f"cloud_{t}" for t in range(schema.N_TIMESTAMPS)]].to_numpy(dtype=float)
        ok = np.nan_to_num(cloud, nan=np.inf) <= max_cloud
        keep &= ok.all(axis=1) if all_times else ok.any(axis=1)
    if bbox is not None:
        lon0, lat0, lon1, lat1 = bbox
        keep &= (table["center_lon"].between(lon0, lon1) & table["center_lat"].between(lat0, lat1)).to_numpy()
    times = table[[f"s2_time_{t}" for t in range(schema.N_TIMESTAMPS)]]
    if start is not None:
        keep &= (times >= pd.Timestamp(start)).all(axis=1).to_numpy()
    if end is not None:
        keep &= (times <= pd.Timestamp(end)).all(axis=1).to_numpy()
    if tiles is not None:
        keep &= table["tile_id"].isin(list(tiles)).to_numpy()
    if split is not None:
        keep &= (table["split"] == split).to_numpy()
    return table[keep]


__all__ = ["COLUMNS", "match_time_columns", "read_metadata", "select"]
