"""The dataset's published GeoParquet metadata tables, read into one documented layout.

Two generations exist:

* first release, ``splits/{split}_metadata.parquet``: one row per location **and timestamp**, index
  ``<sample>_<t>``, columns ``sample_id``, ``time_id`` (0..3), ``time``, ``tile_id`` (MGRS), ``geometry``
  (footprint, EPSG:4326), ``tile_crs`` (EPSG), ``file`` (chunk file name);
* 2026 release, ``{split}_metadata.parquet``: one row per **location**: ``tar``, ``zarr``, ``sample_id``,
  ``split``, ``center_lon``, ``center_lat``, ``crs``, ``bounds``, ``geometry``, then four S2 times, four S1 times
  and four cloud-cover fractions. Those twelve names are not published (no source shows them): they are
  matched by meaning (see :func:`match_time_columns`); the other names are those the dataset's README lists.

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
from .errors import SchemaError
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

#: Season words a column may carry instead of a timestamp number (autumn and fall are one season).
SEASONS = ("spring", "summer", "autumn", "winter")
_SEASON_WORDS = {"spring": "spring", "summer": "summer", "autumn": "autumn", "fall": "autumn", "winter": "winter"}


def _index_of(name: str) -> int | str | None:
    """The timestamp a column is about: its last number, or its season word (placed by date later)."""
    low = name.lower()
    for word, season in _SEASON_WORDS.items():
        if word in low:
            return season
    digits = re.findall(r"\d+", low.replace("s1", "").replace("s2", ""))
    return int(digits[-1]) if digits else None


def match_time_columns(columns: Sequence[str]) -> dict[str, str]:
    """Canonical name -> column of the table, matched by meaning.

    Accepted: a column naming the sensor (``s2``/``S2``, ``s1``/``S1``) and a time (``time``, ``date``,
    ``datetime``, ``acq``), or naming cloud (``cloud``, ``cc``), with the timestamp as its last number (0..3, or
    1..4 when all four are numbered so): canonical ``s2_time_t``, ``s1_time_t``, ``cloud_t``. A column named by
    a season word (spring, summer, autumn/fall, winter) instead gets ``s2_time_spring``, ``cloud_autumn``, ...:
    timestamps are stored by date, so timestamp 0 can be any season, and :func:`read_metadata` places season
    columns per location by their S2 dates. Examples: ``S2_time_0``, ``s1_date_3``, ``cloud_cover_2``,
    ``cloud_fraction_t1``, ``s2_acq_winter``. A column with neither (``S2_time``, ``cloud_cover``) is timestamp 0
    when its kind has no numbered column: a table of one timestamp per location (TerraMesh's, assumed).
    """
    found: dict[str, dict[int | str, str]] = {"s2_time": {}, "s1_time": {}, "cloud": {}}
    for col in columns:
        low = str(col).lower()
        if low in ("time", "time_id", "sample_id", "tile_id", "tile_crs"):
            continue
        t = _index_of(low)
        if t is None:
            t = -1  # no number: a table of one timestamp per location (TerraMesh's), placed at 0 below
        timeish = any(w in low for w in ("time", "date", "acq"))
        if "cloud" in low or re.search(r"(^|_)cc(_|\d|$)", low):
            found["cloud"][t] = col
        elif timeish and "s2" in low:
            found["s2_time"][t] = col
        elif timeish and "s1" in low:
            found["s1_time"][t] = col
    out = {}
    for kind, by_t in found.items():
        numbered = {t: c for t, c in by_t.items() if isinstance(t, int) and t >= 0}
        if sorted(numbered) == [1, 2, 3, 4]:
            numbered = {t - 1: c for t, c in numbered.items()}
        if not numbered and -1 in by_t:
            numbered = {0: by_t[-1]}
        for t, col in numbered.items():
            if 0 <= t < schema.N_TIMESTAMPS:
                out[f"{kind}_{t}"] = col
        for season, col in by_t.items():
            if isinstance(season, str):
                out[f"{kind}_{season}"] = col
    return out


def season_slots(s2_times: Any) -> np.ndarray:
    """Where each season's column goes, per location: int64 ``[n, 4]``, ``slots[i, k]`` = the timestamp index of
    season ``SEASONS[k]`` = the rank of its S2 date among the location's four (timestamps are stored by date;
    unknown dates rank last). ``s2_times``: datetime64 ``[n, 4]`` in :data:`SEASONS` order."""
    times = np.asarray(s2_times, dtype="datetime64[ns]").astype(np.int64)
    times = np.where(times == np.iinfo(np.int64).min, np.iinfo(np.int64).max, times)  # NaT last
    order = np.argsort(times, axis=1, kind="stable")
    slots = np.empty_like(order)
    np.put_along_axis(slots, order, np.arange(times.shape[1])[None, :].repeat(len(times), 0), axis=1)
    return slots.astype(np.int64)


#: The middle of each season's acquisition window (day of year): 20 Mar, 21 Jun, 22 Sep, 21 Dec.
_SEASON_DAYS = np.array([79, 172, 265, 355])


def _slots_from_numbered(s2_times: np.ndarray) -> np.ndarray:
    """int64 ``[n, 4]``: the timestamp whose S2 date lies nearest each season's window (-1 where none is known)."""
    times = np.asarray(s2_times, dtype="datetime64[ns]")
    days = (times.astype("datetime64[D]") - times.astype("datetime64[Y]").astype("datetime64[D]")).astype(float)
    days[np.isnat(times)] = np.nan
    dist = np.abs(days[:, :, None] - _SEASON_DAYS[None, None, :])
    dist = np.minimum(dist, 365 - dist)  # the year wraps: 2 Jan is 12 days from 21 Dec
    slots = np.full((len(times), len(SEASONS)), -1, dtype=np.int64)
    known = ~np.isnan(dist).all(axis=1)  # [n, 4 seasons]
    best = np.argmin(np.nan_to_num(dist, nan=np.inf), axis=1)
    slots[known] = best[known]
    return slots


def _cloud_fraction(values: Any, column: str, path: str) -> np.ndarray:
    """Cloud cover as a fraction 0..1: fractions pass, percentages (some value above 1, none above 100) are
    divided by 100; anything else is an error naming the column."""
    x = np.asarray(values, dtype=float)
    finite = x[np.isfinite(x)]
    if finite.size and (finite.min() < 0 or finite.max() > 100):
        raise SchemaError(f"{path}: column {column!r} holds {finite.min():g}..{finite.max():g}; a cloud-cover "
                          "fraction (0..1) or percentage (0..100) was expected")
    return x / 100.0 if finite.size and finite.max() > 1 else x


def _epsg(values: Any, column: str, path: str) -> np.ndarray:
    """EPSG codes as int64 from integers, integral floats or ``"EPSG:32633"`` strings; missing -> 0."""
    import pandas as pd

    # A table has a few hundred distinct zones in 244k rows: each distinct value is parsed once.
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    parsed = np.zeros(len(uniques) + 1, dtype=np.int64)  # the last slot: missing (sentinel -1)
    for u, v in enumerate(uniques):
        if isinstance(v, float) and np.isnan(v):
            continue
        text = str(v).strip().upper().removeprefix("EPSG:")
        try:
            code = float(text)
        except ValueError:
            code = float("nan")
        if not np.isfinite(code) or code != int(code) or not 1024 <= code <= 999_999:
            i = int(np.flatnonzero(codes == u)[0])
            raise SchemaError(f"{path}: column {column!r} row {i} holds {v!r}, not an EPSG code (e.g. 32633 or "
                              "'EPSG:32633')")
        parsed[u] = int(code)
    return parsed[codes]


def _read_parquet(path: str, storage_options: Mapping[str, Any] | None) -> Any:
    import geopandas as gpd

    if not is_url(path):
        return gpd.read_parquet(path)
    import io

    # One whole read (the table is tens of MB): plain HTTP(S) needs no fsspec extra, and retries apply.
    return gpd.read_parquet(io.BytesIO(read_bytes(path, storage_options)))


def _key_of(value: Any) -> str:
    """The location key of a table id: SSL4EO-S12's 7-digit id (``80717``, ``0080717_0`` -> ``0080717``), or a
    TerraMesh member key as it is (``ssl4eos12_val_0080385``)."""
    try:
        return schema.location_key(value)
    except ValueError:
        return str(value)


def _sample_of(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    # The common cases whole-column (a 244k-row table): 7-digit strings as they are, integers zero-padded.
    if arr.dtype.kind in "iu" and arr.size and 0 <= arr.min() and arr.max() < 10**schema.SAMPLE_ID_WIDTH:
        return np.char.zfill(arr.astype(str), schema.SAMPLE_ID_WIDTH)
    if arr.dtype.kind in "UO" and arr.size:
        text = arr.astype(str)
        if (np.char.str_len(text) == schema.SAMPLE_ID_WIDTH).all() and np.char.isdigit(text).all():
            return text
    return np.array([_key_of(v) for v in values])


def _split_of(names: Any) -> list[str | None]:
    out = []
    for n in names:
        parsed = schema.parse_chunk_file_name(str(n)) if n is not None else None
        out.append(parsed[0] if parsed else None)
    return out


def _first_release(table: Any, path: str) -> Any:
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
    out["crs"] = _epsg(first["tile_crs"].to_numpy(), "tile_crs", path) if "tile_crs" in first else 0
    out["tile_id"] = first["tile_id"] if "tile_id" in first else None
    for t in range(schema.N_TIMESTAMPS):
        out[f"s2_time_{t}"] = pd.to_datetime(times[t]) if t in times.columns else pd.NaT
        out[f"s1_time_{t}"] = pd.NaT
        out[f"cloud_{t}"] = np.nan
    return gpd.GeoDataFrame(out, geometry=geometry.values, crs=geometry.crs)


def _second_release(table: Any, path: str) -> Any:
    import geopandas as gpd
    import pandas as pd

    matched = match_time_columns(list(table.columns))
    out = pd.DataFrame(index=pd.Index(_sample_of(table["sample_id"].values), name="sample"))
    out["split"] = table["split"].astype(str).values if "split" in table.columns else None
    out["file"] = table["file"].values if "file" in table.columns else None
    out["tar"] = table["tar"].astype(str).values if "tar" in table.columns else None
    for name in ("center_lon", "center_lat"):
        out[name] = table[name].astype(float).values
    out["crs"] = _epsg(table["crs"].to_numpy(), "crs", path) if "crs" in table.columns else 0
    out["tile_id"] = table["tile_id"].values if "tile_id" in table.columns else None
    n = len(table)
    values: dict[str, np.ndarray] = {}
    for t in range(schema.N_TIMESTAMPS):
        for kind in ("s2_time", "s1_time"):
            col = matched.get(f"{kind}_{t}")
            values[f"{kind}_{t}"] = (pd.to_datetime(table[col].values).to_numpy("datetime64[ns]") if col
                                     else np.full(n, np.datetime64("NaT"), "datetime64[ns]"))
        col = matched.get(f"cloud_{t}")
        values[f"cloud_{t}"] = _cloud_fraction(table[col].values, col, path) if col else np.full(n, np.nan)
    seasonal = [k for k in matched if k.rsplit("_", 1)[-1] in SEASONS]
    if seasonal:  # columns by season: placed per location by date
        if all(f"s2_time_{s}" in matched for s in SEASONS):
            s2 = np.stack([pd.to_datetime(table[matched[f"s2_time_{s}"]].values).to_numpy("datetime64[ns]")
                           for s in SEASONS], axis=1)
            slots = season_slots(s2)
        else:  # the S2 times are numbered: each timestamp's season from its date
            s2 = np.stack([values[f"s2_time_{t}"] for t in range(schema.N_TIMESTAMPS)], axis=1)
            slots = _slots_from_numbered(s2)
        rows = np.arange(n)
        for kind in ("s2_time", "s1_time", "cloud"):
            for k, season in enumerate(SEASONS):
                col = matched.get(f"{kind}_{season}")
                if col is None:
                    continue
                v = (pd.to_datetime(table[col].values).to_numpy("datetime64[ns]") if kind != "cloud"
                     else _cloud_fraction(table[col].values, col, path))
                for t in range(schema.N_TIMESTAMPS):
                    pick = slots[:, k] == t
                    values[f"{kind}_{t}"] = values[f"{kind}_{t}"].copy()
                    values[f"{kind}_{t}"][rows[pick]] = v[pick]
    for name, v in values.items():
        out[name] = v
    return gpd.GeoDataFrame(out, geometry=table.geometry.values, crs=table.crs or "EPSG:4326")


def read_metadata(path: Any, *, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A published metadata table (either generation), local or URL (or the table already read, as a
    GeoDataFrame with its published columns), as one row per location.

    Returns
    -------
    geopandas.GeoDataFrame
        Index ``sample`` (7-digit str); columns :data:`COLUMNS` in that order: ``split``, ``file``, ``tar``,
        ``center_lon``/``center_lat`` (float64 degrees), ``crs`` (int64 EPSG), ``tile_id``,
        ``s2_time_0..3`` and ``s1_time_0..3`` (datetime64[ns]), ``cloud_0..3`` (float64, 0..1), ``geometry``
        (footprint, EPSG:4326). Cloud cover given in percent is converted to fractions; values outside
        0..100, or a ``crs`` that is not an EPSG code, raise :class:`~ssl4eo_zarr.errors.SchemaError` naming the
        column. Columns named by season are placed per location by their S2 dates (see :func:`season_slots`).
    """
    table = path if hasattr(path, "columns") else _read_parquet(path, storage_options)
    where = "the table" if hasattr(path, "columns") else str(path)
    out = _first_release(table, where) if "time_id" in table.columns else _second_release(table, where)
    return out[list(COLUMNS)]


def read_table(path: str, *, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A published metadata table as published (its own columns), local or URL: one download, for
    :func:`read_metadata` and :func:`table_rows` to share."""
    return _read_parquet(path, storage_options)


def table_rows(path: Any, samples: Sequence[str], *, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The rows of a published table (either generation, its own columns kept; a path or the table as
    :func:`read_table` gives it) that describe ``samples`` (7-digit ids), in the table's order: what a subset
    of the dataset publishes beside itself."""
    table = path if hasattr(path, "columns") else _read_parquet(path, storage_options)
    ids = table["sample_id"].values if "sample_id" in table.columns else table.index.values
    return table[np.isin(_sample_of(ids), np.asarray(list(samples), dtype=str))]


def select(table: Any, *, max_cloud: float | None = None, all_times: bool = True,
           bbox: tuple[float, float, float, float] | None = None, start: Any = None, end: Any = None,
           tiles: Sequence[str] | None = None, split: str | None = None) -> Any:
    """Rows of a :func:`read_metadata` table that pass every filter given.

    ``max_cloud``: cloud fraction (0..1) at most this in every timestamp (``all_times``) or in at least one;
    unknown fractions (NaN) never pass. ``bbox``: ``(min_lon, min_lat, max_lon, max_lat)`` in degrees containing
    the centre; ``min_lon > max_lon`` is a box across the antimeridian (e.g. ``(170, -20, -170, 0)``).
    ``start``/``end``: every S2 time within, both inclusive (a date without a time of day as ``end`` takes
    that whole day). ``tiles``: MGRS tile ids. ``split``: train/val. A filter that cannot apply (out of range,
    start after end, no cloud columns in the table) raises ``ValueError`` naming it.
    """
    import pandas as pd

    keep = np.ones(len(table), dtype=bool)
    if max_cloud is not None:
        if not 0.0 <= float(max_cloud) <= 1.0:
            raise ValueError(f"max_cloud={max_cloud!r}: a cloud fraction from 0 to 1")
        columns = [f"cloud_{t}" for t in range(schema.N_TIMESTAMPS)]
        if not set(columns) <= set(table.columns) or table[columns].isna().all(axis=None):
            raise ValueError("max_cloud: this metadata table has no cloud cover (no cloud_0..cloud_3 values); "
                             "drop the filter or pass a table that has it")
        cloud = table[columns].to_numpy(dtype=float)
        ok = np.nan_to_num(cloud, nan=np.inf) <= max_cloud
        keep &= ok.all(axis=1) if all_times else ok.any(axis=1)
    if bbox is not None:
        lon0, lat0, lon1, lat1 = check_bbox(bbox)
        lon = table["center_lon"]
        inside = lon.between(lon0, lon1) if lon0 <= lon1 else (lon >= lon0) | (lon <= lon1)
        keep &= (inside & table["center_lat"].between(lat0, lat1)).to_numpy()
    times = table[[f"s2_time_{t}" for t in range(schema.N_TIMESTAMPS)]]
    first = _timestamp(start, "start") if start is not None else None
    last = _timestamp(end, "end") if end is not None else None
    if first is not None and last is not None and first > last:
        raise ValueError(f"dates: start {start} is after end {end}")
    if first is not None:
        keep &= (times >= first).all(axis=1).to_numpy()
    if last is not None:
        if _date_only(end, last):
            keep &= (times < last + pd.Timedelta(days=1)).all(axis=1).to_numpy()
        else:
            keep &= (times <= last).all(axis=1).to_numpy()
    if tiles is not None:
        keep &= table["tile_id"].isin(list(tiles)).to_numpy()
    if split is not None:
        keep &= (table["split"] == split).to_numpy()
    return table[keep]


def check_bbox(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """``(W, S, E, N)`` in degrees, checked: four finite numbers, longitudes in -180..180, latitudes in -90..90,
    S <= N (W > E is a box across the antimeridian). Raises ``ValueError`` naming what is wrong."""
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"bbox={bbox!r}: four numbers W,S,E,N in degrees") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ValueError(f"bbox={bbox!r}: four finite numbers W,S,E,N in degrees")
    w, s, e, n = values
    if not (-180 <= w <= 180 and -180 <= e <= 180):
        raise ValueError(f"bbox={bbox!r}: longitudes (W, E) must lie in -180..180")
    if not (-90 <= s <= 90 and -90 <= n <= 90):
        raise ValueError(f"bbox={bbox!r}: latitudes (S, N) must lie in -90..90")
    if s > n:
        raise ValueError(f"bbox={bbox!r}: south {s} is north of north {n} (the order is W,S,E,N)")
    return w, s, e, n


def _timestamp(value: Any, name: str) -> Any:
    import pandas as pd

    try:
        t = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ValueError(f"dates: {name} {value!r} is not a date (e.g. 2021-06-30)") from None
    if t is pd.NaT:
        raise ValueError(f"dates: {name} {value!r} is not a date (e.g. 2021-06-30)")
    return t.tz_convert(None) if t.tzinfo is not None else t


def _date_only(value: Any, t: Any) -> bool:
    """A day without a time of day (``"2021-06-30"``, a ``datetime.date``): an end that includes that day."""
    import datetime

    if isinstance(value, datetime.datetime):
        return False
    if isinstance(value, datetime.date):
        return True
    if isinstance(value, str):
        return t == t.normalize() and not any(c in value for c in "T: ")
    return False


__all__ = ["COLUMNS", "check_bbox", "SEASONS", "match_time_columns", "read_metadata", "read_table", "season_slots", "select",
           "table_rows"]
