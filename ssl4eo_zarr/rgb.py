"""The S2RGB transform of SSL4EO-S12 v1.1: S2 L2A red/green/blue DN -> uint8, per image. Pure numpy."""

from __future__ import annotations

import numpy as np

from . import schema


def to_rgb(img: np.ndarray, offset: int = schema.S2_OFFSET) -> np.ndarray:
    """Convert S2 L2A red, green, blue to 8-bit RGB exactly as the published S2RGB modality.

    Each image (the three channels of one location and timestamp together) is treated alone:

    1. remove the offset;
    2. soften the tails: below the 2 % quantile ``Q2`` a value becomes ``Q2 + (v - Q2) * 0.5``, above the
       98 % quantile ``Q98`` it becomes ``Q98 + (v - Q98) * 0.5``;
    3. from the 0.2 %, 50 % and 99.8 % quantiles of the result: upper ``U = max(2000, Q99.8)``, lower
       ``L = 0`` if ``Q50 < 1000`` else ``Q0.2``;
    4. ``(v - L) / (U - L) * 255``, clipped to 0..255, cast to uint8.

    Parameters
    ----------
    img:
        int16 (or any numeric) ``[..., 3, H, W]``: red, green, blue (B04, B03, B02) in DN with ``offset``.
    offset:
        Added to the DN at storage (1000 for the published files, 0 for the WebDataset distribution).

    Returns
    -------
    numpy.ndarray
        uint8 ``[..., 3, H, W]``.
    """
    img = np.asarray(img)
    if img.ndim < 3 or img.shape[-3] != 3:
        raise ValueError(f"to_rgb expects [..., 3, H, W] (red, green, blue), got shape {img.shape}")
    lead = img.shape[:-3]
    flat = img.reshape(-1, int(np.prod(img.shape[-3:]))).astype(np.float32) - np.float32(offset)
    q2, q98 = np.quantile(flat, [0.02, 0.98], axis=1, keepdims=True)
    flat = np.where(flat < q2, q2 + (flat - q2) * 0.5, flat)
    flat = np.where(flat > q98, q98 + (flat - q98) * 0.5, flat)
    q002, q50, q998 = np.quantile(flat, [0.002, 0.5, 0.998], axis=1, keepdims=True)
    upper = np.maximum(2000.0, q998)
    lower = np.where(q50 < 1000.0, 0.0, q002)
    out = np.clip((flat - lower) / (upper - lower) * 255.0, 0.0, 255.0).astype(np.uint8)
    return out.reshape(*lead, *img.shape[-3:])


def rgb_from_l2a(l2a: np.ndarray, offset: int = schema.S2_OFFSET) -> np.ndarray:
    """uint8 ``[..., 3, H, W]`` from S2L2A int16 ``[..., 12, H, W]`` (selects B04, B03, B02, then :func:`to_rgb`)."""
    idx = [schema.S2L2A.bands.index(b) for b in schema.RGB_SOURCE_BANDS]
    return to_rgb(np.asarray(l2a)[..., idx, :, :], offset=offset)
