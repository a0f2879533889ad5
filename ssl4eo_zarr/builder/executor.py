"""Where build tasks run: in this process (``workers=0``) or on a dask.distributed cluster."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import BuildError


class Executor:
    """Runs task lists in-process (``workers=0``) or on a dask.distributed cluster, yielding results as they end."""

    def __init__(self, workers: int, scheduler: str | None):
        self.client = None
        self.cluster = None
        if scheduler or workers > 0:
            try:
                from distributed import Client, LocalCluster
            except ImportError as exc:
                raise BuildError("parallel builds need dask.distributed: pip install 'ssl4eo-zarr[build]' "
                                 "(or run with workers=0)") from exc
            if scheduler:
                self.client = Client(scheduler)
            else:
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
                self.client = Client(self.cluster)

    def map(self, fn: Callable, items: Sequence, *args: Any, keys: Sequence[str]):
        if self.client is None:
            for item in items:
                yield fn(item, *args)
            return
        from distributed import as_completed

        futures = self.client.map(fn, items, *[[a] * len(items) for a in args], key=list(keys), pure=False)
        for future in as_completed(futures):
            yield future.result()
            future.release()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
