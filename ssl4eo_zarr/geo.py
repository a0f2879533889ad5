"""Patch geometry: UTM zones, the 264 x 264 px grid of a location, MGRS tile ids. Pure functions over pyproj."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from pyproj import Transformer

from . import schema

_MGRS_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_MGRS_COLS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_MGRS_ROWS = "ABCDEFGHJKLMNPQRSTUV"


def utm_zone(lat: float, lon: float) -> int:
    """UTM zone number (1..60) of a point, with the Norway (32V) and Svalbard (31X..37X) exceptions."""
    if not -80.0 <= lat <= 84.0:
        raise ValueError(f"latitude {lat} is outside UTM's -80..84 degrees")
    lon = ((lon + 180.0) % 360.0) - 180.0
    zone = int((lon + 180.0) // 6.0) + 1
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    elif 72.0 <= lat <= 84.0 and lon >= 0.0:
        if lon < 9.0:
            zone = 31
        elif lon < 21.0:
            zone = 33
        elif lon < 33.0:
            zone = 35
        elif lon < 42.0:
            zone = 37
    return min(zone, 60)


def utm_epsg(lat: float, lon: float) -> int:
    """EPSG code of the UTM zone of a point: 326zz north of the equator, 327zz south."""
    return (32600 if lat >= 0 else 32700) + utm_zone(lat, lon)


@lru_cache(maxsize=256)
def transformer(src_epsg: int, dst_epsg: int) -> Transformer:
    """Cached pyproj transformer with (x, y) = (lon, lat) axis order for geographic CRSs."""
    return Transformer.from_crs(src_epsg, dst_epsg, always_xy=True)


def lonlat_to_utm(lon, lat, epsg: int):
    """Project EPSG:4326 (lon, lat) in degrees to (easting, northing) in metres of ``epsg``."""
    return transformer(4326, int(epsg)).transform(lon, lat)


def utm_to_lonlat(x, y, epsg: int):
    """Inverse of :func:`lonlat_to_utm`: (lon, lat) in degrees."""
    return transformer(int(epsg), 4326).transform(x, y)


def patch_grid(
    lat: float, lon: float, *, epsg: int | None = None, size: int = schema.PATCH_SIZE, res: float = schema.RESOLUTION
) -> tuple[int, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of the ``size`` x ``size`` patch centred on a location.

    The patch edges are snapped to multiples of ``res`` so that patches of neighbouring locations (and 20 m /
    60 m source pixels of the same UTM grid) nest exactly.

    Returns
    -------
    (epsg, x, y):
        ``epsg`` int (the location's UTM zone unless given); ``x`` float64 ``[size]`` eastings in metres,
        increasing by ``res``; ``y`` float64 ``[size]`` northings in metres, decreasing by ``res``.
    """
    epsg = int(epsg or utm_epsg(lat, lon))
    e, n = lonlat_to_utm(lon, lat, epsg)
    half = size * res / 2.0
    left = math.floor((e - half) / res + 0.5) * res
    top = math.floor((n + half) / res + 0.5) * res
    x = left + res / 2.0 + res * np.arange(size, dtype=np.float64)
    y = top - res / 2.0 - res * np.arange(size, dtype=np.float64)
    return epsg, x, y


def grid_transform(x: np.ndarray, y: np.ndarray):
    """Affine transform (rasterio/rioxarray convention) of a grid given by pixel-centre coordinates."""
    from affine import Affine

    resx = float(x[1] - x[0]) if len(x) > 1 else schema.RESOLUTION
    resy = float(y[1] - y[0]) if len(y) > 1 else -schema.RESOLUTION
    return Affine(resx, 0.0, float(x[0]) - resx / 2.0, 0.0, resy, float(y[0]) - resy / 2.0)


def mgrs_tile(lat: float, lon: float) -> str:
    """MGRS 100 km tile id of a point as used in S2 product names, e.g. ``T33UVP``."""
    zone = utm_zone(lat, lon)
    band = _MGRS_BANDS[min(int((lat + 80.0) // 8.0), len(_MGRS_BANDS) - 1)]
    e, n = lonlat_to_utm(lon, lat, (32600 if lat >= 0 else 32700) + zone)
    col = _MGRS_COLS[(zone - 1) % 3][int(e // 100000) - 1]
    row = _MGRS_ROWS[(int(n // 100000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"T{zone:02d}{band}{col}{row}"


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres (arrays broadcast)."""
    r = 6371008.8
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * r * np.arcsin(np.sqrt(a))
