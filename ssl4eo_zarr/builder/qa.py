"""Quality control and encoding: pure numpy functions, no I/O."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .. import schema

#: A location is dropped when any timestamp or channel has more missing pixels than this fraction.
MAX_NAN_FRACTION = 0.01


def fill_nearest(image: np.ndarray) -> np.ndarray:
    """NaNs of each ``[H, W]`` image in ``image`` ``[..., H, W]`` replaced by the nearest valid pixel.

    An image with no valid pixel at all is returned unchanged (the caller drops such a location first).
    """
    out = np.array(image, dtype=np.float32, copy=True)
    flat = out.reshape(-1, *out.shape[-2:])
    for img in flat:
        missing = np.isnan(img)
        if missing.any() and not missing.all():
            _, (iy, ix) = ndimage.distance_transform_edt(missing, return_indices=True)
            img[missing] = img[iy[missing], ix[missing]]
    return out


def to_s2_dn(reflectance_dn: np.ndarray, offset: int = schema.S2_OFFSET) -> np.ndarray:
    """S2 DN (reflectance x 10000, without offset) float -> int16 with ``offset`` added, saturating at the int16
    limits instead of overflowing."""
    info = np.iinfo(np.int16)
    return np.clip(np.rint(np.asarray(reflectance_dn, dtype=np.float64)) + offset, info.min, info.max).astype(np.int16)


def to_s1_db(db: np.ndarray) -> np.ndarray:
    """S1 backscatter in dB float -> float16 (clipped to the float16 range, never inf)."""
    info = np.finfo(np.float16)
    return np.clip(np.asarray(db, dtype=np.float32), info.min, info.max).astype(np.float16)


def majority(values: list) -> object:
    """The most frequent value; ties go to the first seen (the earliest timestamp)."""
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)
