"""Which locations a fetch takes: ids, the metadata table's filters (each argument checked first) and a seeded
random sample."""


from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import schema
from ..errors import SSL4EOError
from ..storage import basename


class SelectionError(SSL4EOError, ValueError):
    """A selection that cannot be made: unknown ids, an empty result (naming the filter that emptied it)."""


def read_ids(locations: str | os.PathLike | Sequence[str], *, raw: bool = False) -> list[str]:
    """Location keys (7-digit ids, or TerraMesh keys such as ``ssl4eos12_val_0080385``) from a text file (one a
    line; blank lines and ``#`` comments ignored) or a sequence; ``raw``: as written (``0194630_1`` kept whole,
    a TerraMesh season), each checked to be a key."""
    if isinstance(locations, str | os.PathLike):
        with open(os.fspath(locations), encoding="utf-8") as f:
            items = [line.split("#", 1)[0].strip() for line in f]
    else:
        items = [str(x) for x in locations]
    out = []
    for item in items:
        if not item:
            continue
        try:
            key = schema.location_key(item)
            out.append(item if raw else key)
        except ValueError as exc:
            raise SelectionError(str(exc)) from None
    return out


def _check_arguments(bbox: Sequence[float] | None, months: Sequence[int] | None, dates: Sequence[Any] | None,
                     max_cloud: float | None, limit: int | None) -> None:
    """Every filter argument checked before anything is read: a wrong one is named, never a selection that an
    impossible filter left empty."""
    from ..metadata import _timestamp, check_bbox

    try:
        if bbox is not None:
            check_bbox(bbox)
        if dates is not None:
            if isinstance(dates, str) or len(dates) != 2:
                raise ValueError(f"dates={dates!r}: a (start, end) pair of dates")
            first, last = (_timestamp(d, n) for d, n in zip(dates, ("start", "end")))
            if first > last:
                raise ValueError(f"dates: start {dates[0]} is after end {dates[1]}")
    except ValueError as exc:
        raise SelectionError(str(exc)) from None
    if months is not None:
        bad = [m for m in months if isinstance(m, bool) or not isinstance(m, int | np.integer) or not 1 <= m <= 12]
        if bad or not len(months):
            raise SelectionError(f"months={list(months)!r}: months are 1 (January) to 12 (December)")
    if max_cloud is not None and not 0.0 <= float(max_cloud) <= 1.0:
        raise SelectionError(f"max_cloud={max_cloud!r}: a cloud fraction from 0 to 1 (0.1 is 10 %)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1):
        raise SelectionError(f"limit={limit!r}: a number of locations, at least 1")


def _filter_table(table: Any, path: str, candidates: list[str] | None, bbox: Sequence[float] | None,
                  months: Sequence[int] | None, dates: Sequence[Any] | None,
                  max_cloud: float | None) -> tuple[list[str], list[tuple[str, int]]]:
    """The candidates (all of the table's when ``None``) that pass the table's filters, with the count each
    filter left."""
    from ..metadata import select

    known = set(table.index)
    pool = list(table.index) if candidates is None else [k for k in candidates if k in known]
    steps = [(f"in the table {basename(path)}" + (f" ({len(candidates) - len(pool)} ids not in it)"
                                                   if candidates is not None and len(pool) < len(candidates) else ""),
              len(pool))]
    sub = table.loc[pool]
    for name, kwargs in (("--bbox", {"bbox": tuple(bbox)} if bbox is not None else None),
                         ("--max-cloud", {"max_cloud": max_cloud} if max_cloud is not None else None),
                         ("--dates", {"start": dates[0], "end": dates[1]} if dates is not None else None)):
        if kwargs is not None:
            try:
                sub = select(sub, **kwargs)
            except ValueError as exc:
                raise SelectionError(f"{name}: {exc}") from None
            steps.append((f"{name} {list(kwargs.values())}", len(sub)))
    if months is not None:
        sub = sub[np.isin(_months_of(sub), list(months)).any(axis=1)]
        steps.append((f"--months {list(months)}", len(sub)))
    keep = set(sub.index)
    return [k for k in pool if k in keep], steps


def _months_of(table: Any) -> np.ndarray:
    times = table[[f"s2_time_{t}" for t in range(schema.N_TIMESTAMPS)]].to_numpy("datetime64[ns]")
    months = (times.astype("datetime64[M]").astype(np.int64) % 12) + 1
    return np.where(np.isnat(times), 0, months)


def _draw(pool: Sequence[str], limit: int, seed: int) -> list[str]:
    """``limit`` of ``pool`` drawn with ``seed``, in ``pool``'s order (all of it when it holds no more)."""
    if limit >= len(pool):
        return list(pool)
    rng = np.random.default_rng(seed)
    pick = set(rng.choice(len(pool), size=int(limit), replace=False).tolist())
    return [k for j, k in enumerate(pool) if j in pick]

