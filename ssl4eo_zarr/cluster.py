"""Work dealt to a dask.distributed cluster: one helper for the commands that take ``client=`` /
``--scheduler`` (``fetch``, ``validate``), so a scheduler address and a ``Client`` are handled one way."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import SSL4EOError


@contextlib.contextmanager
def dask_client(client: Any) -> Iterator[Any]:
    """The ``distributed.Client`` to use: ``client`` itself, or one connected to the scheduler address
    ``client`` names (closed afterwards)."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise SSL4EOError("a dask cluster needs dask.distributed: pip install 'ssl4eo-zarr[build]'") from exc
    if not isinstance(client, str):
        yield client
        return
    own = Client(client)
    try:
        yield own
    finally:
        own.close()


def map_ordered(fn: Callable[..., Any], items: Sequence[Any], *, client: Any = None,
                progress: Callable[..., Any] | None = None, desc: str = "", unit: str = "it",
                key: str = "task", **kwargs: Any) -> list[Any]:
    """``[fn(item, **kwargs) for item in items]``, in this process (``client=None``) or one task per item on a
    dask cluster (results in ``items``' order; a task's error is raised here); ``progress``: a tqdm-like
    factory for a bar of items."""
    if client is None:
        iterator = progress(items, desc=desc, unit=unit) if progress else items
        return [fn(item, **kwargs) for item in iterator]
    from distributed import as_completed

    with dask_client(client) as c:
        futures = c.map(fn, list(items), pure=False, key=[f"{key}-{k}" for k in range(len(items))], **kwargs)
        bar = progress(total=len(futures), desc=desc, unit=unit) if progress else None
        try:
            for future in as_completed(futures):
                future.result()  # the first error, as soon as it happens
                if bar is not None:
                    bar.update(1)
            return c.gather(futures)
        finally:
            c.cancel([f for f in futures if not f.done()])
            if bar is not None:
                bar.close()


__all__ = ["dask_client", "map_ordered"]
