"""The Sentinel-1 time-order problem of files published before 2026-02-19, as pure numpy functions.

In those chunk files S1GRD ``time_`` is chronological, but the S1 image data and ``file_id`` follow the
product-name order (``S1A_...`` before ``S1B_...``), so S1 season ``t`` does not belong to ``time_[t]`` nor
pairs with S2 season ``t`` (the dataset's GitHub issue #4, fixed by its maintainers on 2026-02-19).

The acquisition start is part of every product id (``S1B_IW_GRDH_1SDV_20201127T214646_...``), so the
problem is detected per location by comparing the times in ``file_id`` with ``time_``, and repaired by
reordering the data and ``file_id`` together so that both follow ``time_``.
"""

from __future__ import annotations

import re

import numpy as np

#: Acquisition start in an S1 product id: ``S1A_IW_GRDH_1SDV_<start>_<stop>_...``.
S1_PRODUCT_TIME = re.compile(r"^S1[A-D]_\w\w_\w{4}_\w{4}_(\d{8}T\d{6})_")
#: Sensing time at the start of an S2 product id: ``20201116T023001_20201116T022955_T51TXG``.
S2_PRODUCT_TIME = re.compile(r"^(\d{8}T\d{6})_")
#: A product-id time and ``time_`` further apart than this (seconds) do not describe the same acquisition.
TOLERANCE_S = 120

#: What users are told when the problem is found.
FIX_NOTE = ("S1 data and file_id of this file follow the product-name order, not time_ (files published before the "
            "2026-02-19 fix, dataset issue #4)")


def product_times(file_id: np.ndarray, pattern: re.Pattern[str] = S1_PRODUCT_TIME) -> np.ndarray | None:
    """Acquisition times parsed from product ids.

    Parameters
    ----------
    file_id:
        str array of any shape (``[sample, time]`` in a chunk file).
    pattern:
        Regular expression whose first group is ``YYYYMMDDTHHMMSS``.

    Returns
    -------
    numpy.ndarray or None
        datetime64[s] of the same shape, or ``None`` when any id does not follow the pattern.
    """
    out = _parsed_times(file_id, pattern)
    return None if np.isnat(out).any() else out


def _parsed_times(file_id: np.ndarray, pattern: re.Pattern[str]) -> np.ndarray:
    """datetime64[s] of each id, NaT where an id does not follow ``pattern``."""
    ids = np.asarray(file_id)
    out = np.full(ids.shape, np.datetime64("NaT"), "datetime64[s]")
    for idx, text in np.ndenumerate(ids):
        m = pattern.match(str(text))
        if m:
            s = m.group(1)
            out[idx] = np.datetime64(f"{s[:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}:{s[13:15]}")
    return out


def plan_order(file_id: np.ndarray, time_: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Per location: the permutation that puts S1 data in the order of ``time_``, and the locations that no
    reordering reconciles.

    Each location is decided on its own: one whose product ids and ``time_`` agree after sorting is
    reordered, one that agrees already stays, and one whose ids cannot be reconciled with ``time_`` (an id
    that carries no time while others do, or times that differ beyond :data:`TOLERANCE_S` in any order) is
    left as stored and reported, never holding back the others.

    Parameters
    ----------
    file_id:
        str ``[sample, time]``, S1 product ids as stored (they travel with the data).
    time_:
        datetime64 ``[sample, time]``, the acquisition times as stored (chronological).

    Returns
    -------
    (perm, left)
        ``perm``: int64 ``[sample, time]`` (stored timestamp ``perm[s, t]`` holds the acquisition of
        ``time_[s, t]``, so ``data[s, perm[s]]`` is chronological; identity rows for locations not moved), or
        ``None`` when no location moves. ``left``: int64 ``[k]`` indices of the locations left as stored
        because they cannot be reconciled (``validate`` reports what is wrong with them).
    """
    ids = np.asarray(file_id)
    empty = np.zeros(0, dtype=np.int64)
    if ids.ndim != 2 or ids.shape != np.shape(time_):
        return None, empty
    parsed = _parsed_times(ids, S1_PRODUCT_TIME)
    unparsed = np.isnat(parsed)
    if unparsed.all():  # ids that carry no times at all (not S1 product ids): nothing to say
        return None, empty
    secs = np.where(unparsed, 0, parsed.astype(np.int64))
    want = np.asarray(time_).astype("datetime64[s]").astype(np.int64)
    perm = np.argsort(secs, axis=1, kind="stable")
    in_order = (np.abs(secs - want) <= TOLERANCE_S).all(axis=1) & ~unparsed.any(axis=1)
    sortable = (np.abs(np.take_along_axis(secs, perm, axis=1) - want) <= TOLERANCE_S).all(axis=1) & ~unparsed.any(axis=1)
    identity = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    perm = np.where((sortable & ~in_order)[:, None], perm, identity).astype(np.int64)
    left = np.flatnonzero(~in_order & ~sortable).astype(np.int64)
    return (perm if (perm != identity).any() else None), left


def chronological_order(file_id: np.ndarray, time_: np.ndarray) -> np.ndarray | None:
    """The permutation of :func:`plan_order` (int64 ``[sample, time]``, identity rows for the locations that
    stay), or ``None`` when no location moves."""
    return plan_order(file_id, time_)[0]


def misordered_rows(perm: np.ndarray | None) -> np.ndarray:
    """Indices of the locations that :func:`chronological_order` moves (int64 ``[k]``)."""
    if perm is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero((perm != np.arange(perm.shape[1])[None, :]).any(axis=1))


def reorder(values: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """``values`` ``[sample, time, ...]`` with each location's timestamps taken in the order ``perm`` ``[sample, time]``."""
    idx = perm.reshape(perm.shape + (1,) * (values.ndim - 2))
    return np.take_along_axis(values, np.broadcast_to(idx, perm.shape + values.shape[2:]), axis=1)
