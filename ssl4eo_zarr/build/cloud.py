"""Cloud-mask providers: where each S2 timestamp's SEnSeI classes come from.

A mask is never invented silently: without a source the build stops, unless the user explicitly asks for a
stated fallback (recorded in the manifest).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ..errors import BuildError
from ..schema import CloudClass

#: Sentinel-2 L2A Scene Classification Layer -> SEnSeI v2 classes.
SCL_TO_SENSEI = {
    0: CloudClass.NO_DATA,        # no data
    1: CloudClass.NO_DATA,        # saturated or defective
    2: CloudClass.LAND,           # dark area pixels (topographic shadow, dark surfaces)
    3: CloudClass.CLOUD_SHADOW,   # cloud shadows
    4: CloudClass.LAND,           # vegetation
    5: CloudClass.LAND,           # not vegetated
    6: CloudClass.WATER,          # water
    7: CloudClass.LAND,           # unclassified
    8: CloudClass.THICK_CLOUD,    # cloud, medium probability
    9: CloudClass.THICK_CLOUD,    # cloud, high probability
    10: CloudClass.THIN_CLOUD,    # thin cirrus
    11: CloudClass.SNOW,          # snow or ice
}
_SCL_LUT = np.full(256, CloudClass.NO_DATA, dtype=np.uint8)
for _k, _v in SCL_TO_SENSEI.items():
    _SCL_LUT[_k] = _v

#: Fallbacks a user may ask for explicitly when no mask source exists.
FALLBACKS = {"land": CloudClass.LAND, "no-data": CloudClass.NO_DATA}


def scl_to_sensei(scl: np.ndarray) -> np.ndarray:
    """uint8 SEnSeI classes from an SCL raster (any integer dtype; NaN or out-of-range -> no data)."""
    scl = np.nan_to_num(np.asarray(scl, dtype=np.float64), nan=0.0)
    return _SCL_LUT[np.clip(scl, 0, 255).astype(np.uint8)]


def sensei_available() -> bool:
    """Whether a SEnSeI v2 model can run here (the ``sensei`` package and local weights)."""
    try:
        import sensei  # noqa: F401
    except ImportError:
        return False
    return bool(os.environ.get("SENSEI_WEIGHTS") and os.path.exists(os.environ["SENSEI_WEIGHTS"]))


def choose_source(season_folder: str, policy: str) -> tuple[str, str | None]:
    """(source kind, file) for one S2 L2A season folder.

    ``policy`` is ``"auto"`` (cloud_mask.tif, else SCL.tif, else SEnSeI if installed, else error), one of
    those names, or ``"fallback:land"`` / ``"fallback:no-data"`` for an explicit constant mask.
    """
    mask = os.path.join(season_folder, "cloud_mask.tif")
    scl = os.path.join(season_folder, "SCL.tif")
    if policy.startswith("fallback:"):
        kind = policy.split(":", 1)[1]
        if kind not in FALLBACKS:
            raise BuildError(f"unknown cloud-mask fallback {kind!r}; use one of {sorted(FALLBACKS)}")
        return policy, None
    if policy in ("auto", "file") and os.path.exists(mask):
        return "file", mask
    if policy in ("auto", "scl") and os.path.exists(scl):
        return "scl", scl
    if policy in ("auto", "sensei") and sensei_available():
        return "sensei", None
    raise BuildError(
        f"no cloud-mask source for {season_folder}: no cloud_mask.tif, no SCL.tif and no SEnSeI v2 installation "
        "(package 'sensei' + SENSEI_WEIGHTS). Provide masks, or pass --cloud-mask fallback:land to write a "
        "constant 'land' mask (recorded in the manifest)."
    )


def constant_mask(policy: str, shape: tuple[int, int]) -> np.ndarray:
    return np.full(shape, FALLBACKS[policy.split(":", 1)[1]], dtype=np.uint8)


def run_sensei(l1c: np.ndarray) -> np.ndarray:  # pragma: no cover - needs the SEnSeI package and weights
    """SEnSeI v2 classes from L1C reflectance ``[13, H, W]`` (DN + 1000) with the locally installed model."""
    import sensei

    model: Callable = sensei.load(os.environ["SENSEI_WEIGHTS"])
    return np.asarray(model((l1c.astype(np.float32) - 1000) / 10000), dtype=np.uint8)
