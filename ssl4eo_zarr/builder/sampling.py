"""Location sampling of SSL4EO-S12 v1: cities, a Gaussian around each, overlap rejection on a 1-degree grid.

The published method searches only the new centre's own 1 x 1 degree cell, so patches across cell borders
can overlap (about 3 % of Tokyo's). ``exact=True`` (the default) also searches the 8 neighbouring cells, so
no pair of accepted centres is closer than the overlap distance.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass

import numpy as np

from .. import schema
from ..errors import BuildError
from ..geo import haversine_m

#: Centres closer than 3/4 of the patch width overlap by 25 % or more.
MIN_DISTANCE_M = 0.75 * schema.PATCH_SIZE * schema.RESOLUTION


@dataclass
class City:
    name: str
    lat: float
    lon: float


def read_cities(path: str) -> list[City]:
    """Cities from a CSV with a header naming ``lat``/``latitude`` and ``lon``/``lng``/``longitude`` columns
    (and optionally ``name``/``city``)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = {k.lower().strip(): k for k in reader.fieldnames or []}
        lat_k = next((fields[k] for k in ("lat", "latitude") if k in fields), None)
        lon_k = next((fields[k] for k in ("lon", "lng", "longitude") if k in fields), None)
        name_k = next((fields[k] for k in ("name", "city", "city_ascii") if k in fields), None)
        if lat_k is None or lon_k is None:
            raise BuildError(f"{path}: needs 'lat' and 'lon' columns, found {reader.fieldnames}")
        cities = [City(row[name_k] if name_k else str(i), float(row[lat_k]), float(row[lon_k]))
                  for i, row in enumerate(reader)]
    if not cities:
        raise BuildError(f"{path}: no cities")
    return cities


def _cell(lat: float, lon: float) -> tuple[int, int]:
    return math.floor(lat), math.floor(((lon + 180.0) % 360.0) - 180.0)


def sample_locations(cities: list[City], n: int, *, seed: int = 0, sigma_km: float = 50.0, exact: bool = True,
                     min_distance_m: float = MIN_DISTANCE_M, max_tries: int | None = None) -> np.ndarray:
    """``n`` patch centres as float64 ``[n, 2]`` (lat, lon in degrees).

    Each draw picks a city uniformly, then a point from a Gaussian with ``sigma_km`` around it, and rejects it
    if an accepted centre within ``min_distance_m`` exists in its 1-degree cell (and, with ``exact``, the 8
    neighbouring cells).
    """
    rng = np.random.default_rng(seed)
    cells: dict[tuple[int, int], list[tuple[float, float]]] = {}
    out: list[tuple[float, float]] = []
    tries = 0
    limit = max_tries or 200 * n + 1000
    sigma_deg = sigma_km / 111.0
    while len(out) < n:
        tries += 1
        if tries > limit:
            raise BuildError(f"placed {len(out)} of {n} locations in {limit} draws: the cities are too few or too dense "
                             "for that many non-overlapping patches")
        city = cities[int(rng.integers(len(cities)))]
        lat = float(np.clip(city.lat + rng.normal(0, sigma_deg), -79.9, 83.9))
        lon = city.lon + rng.normal(0, sigma_deg) / max(math.cos(math.radians(lat)), 0.05)
        lon = ((lon + 180.0) % 360.0) - 180.0
        cy, cx = _cell(lat, lon)
        search = [(cy + dy, ((cx + dx + 180) % 360) - 180) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] if exact \
            else [(cy, cx)]
        near = [p for c in search for p in cells.get(c, ())]
        if near:
            arr = np.asarray(near)
            if (haversine_m(lat, lon, arr[:, 0], arr[:, 1]) < min_distance_m).any():
                continue
        cells.setdefault((cy, cx), []).append((lat, lon))
        out.append((lat, lon))
    return np.asarray(out, dtype=np.float64)


def overlapping_pairs(points: np.ndarray, min_distance_m: float = MIN_DISTANCE_M) -> int:
    """Number of pairs of centres closer than ``min_distance_m`` (brute force; for checks on small sets)."""
    lat, lon = points[:, 0], points[:, 1]
    d = haversine_m(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    return int(((d < min_distance_m) & np.triu(np.ones_like(d, dtype=bool), 1)).sum())


def write_locations(path: str, points: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["location", "lat", "lon"])
        for i, (lat, lon) in enumerate(points):
            w.writerow([schema.sample_id(i), f"{lat:.6f}", f"{lon:.6f}"])
