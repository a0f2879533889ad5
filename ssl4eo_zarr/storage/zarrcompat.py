"""zarr-python 2.18 and 3.x alike: stores and ``xr.open_zarr`` arguments for ``*.zarr.zip`` files."""

from __future__ import annotations

import os
from typing import Any, Literal

from .paths import PathLike


def zarr_store(path: PathLike, *, mode: Literal["r", "w", "a"] = "r"):
    """A zarr store for ``path`` that works with the installed zarr-python (2.18 or 3.x).

    zarr-python 3 does not open ``*.zarr.zip`` paths by itself; this wraps them in its ``ZipStore``.
    Use it as ``zarr.open_group(zarr_store(path), mode="r")`` or
    ``xr.open_zarr(zarr_store(path), **zarr_open_kwargs())``.
    """
    import zarr

    return zarr.storage.ZipStore(os.fspath(path), mode=mode)


def zarr_major() -> int:
    import zarr

    return int(zarr.__version__.split(".")[0])


def zarr_open_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``xr.open_zarr`` that read these format-2 files under either zarr major version."""
    kwargs: dict[str, Any] = {"consolidated": True}
    if zarr_major() >= 3:
        kwargs["zarr_format"] = 2
    return kwargs
