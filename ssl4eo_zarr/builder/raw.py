"""The raw per-band input layout: discovery and metadata (no pixels are read here).

``RAW/{s1,s2a,s2c}/{location}/{season folder}/{band}.tif`` + ``metadata.json`` (SSL4EO-S12 v1 and the raw
v1.1 archives). ``s1`` = S1 GRD (``VV.tif``, ``VH.tif``), ``s2a`` = S2 L2A, ``s2c`` = S2 L1C (``B1.tif`` ..
``B12.tif``, ``B8A.tif``). Optional per S2 timestamp: ``cloud_mask.tif`` (SEnSeI classes) or ``SCL.tif`` in
the ``s2a`` season folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .. import schema
from ..errors import BuildError
from ..schema import RAW_FOLDERS

#: Raw product folder of each modality (S2RGB is made from S2L2A).
_TIME = re.compile(r"(\d{8}T\d{6})")


@dataclass
class RawTimestamp:
    """One acquisition of one modality at one location."""

    folder: str
    time: np.datetime64
    metadata: dict = field(default_factory=dict)

    @property
    def product_id(self) -> str:
        md = self.metadata
        return str(md.get("PRODUCT_ID") or md.get("system:index") or md.get("id") or os.path.basename(self.folder))

    @property
    def mgrs_tile(self) -> str | None:
        tile = self.metadata.get("MGRS_TILE")
        return f"T{tile}" if tile and not str(tile).startswith("T") else tile


@dataclass
class RawLocation:
    """All raw acquisitions of one location: ``timestamps[modality]`` sorted by acquisition time."""

    location: str
    timestamps: dict[str, list[RawTimestamp]]


def _acquired(folder: str, metadata: dict) -> np.datetime64:
    for key in ("system:time_start", "time_start", "SENSING_TIME", "time"):
        value = metadata.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            return np.datetime64(int(value), "ms").astype("datetime64[ns]")
        try:
            return np.datetime64(str(value).replace("Z", "")).astype("datetime64[ns]")
        except ValueError:
            continue
    match = _TIME.search(os.path.basename(folder))
    if match is None:
        raise BuildError(f"{folder}: no acquisition time in metadata.json (system:time_start) or in the folder name")
    s = match.group(1)
    return np.datetime64(f"{s[:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}:{s[13:15]}", "ns")


def read_timestamp(folder: str) -> RawTimestamp:
    meta_path = os.path.join(folder, "metadata.json")
    metadata = {}
    if os.path.exists(meta_path):
        try:
            with open(meta_path, encoding="utf-8") as f:
                metadata = json.load(f)
        except ValueError as exc:
            raise BuildError(f"{meta_path}: invalid JSON ({exc})") from None
        metadata = metadata.get("properties", metadata) if isinstance(metadata, dict) else {}
    return RawTimestamp(folder, _acquired(folder, metadata), metadata)


def discover(raw_root: str) -> list[RawLocation]:
    """Every location under ``raw_root`` with the season folders of each modality, ordered by acquisition time.

    Locations are the union over modality folders; one that lacks a modality keeps an empty list (the
    builder drops it with that reason).
    """
    if not os.path.isdir(raw_root):
        raise BuildError(f"raw input folder not found: {raw_root}")
    present = {m: os.path.join(raw_root, d) for m, d in RAW_FOLDERS.items() if os.path.isdir(os.path.join(raw_root, d))}
    if not present:
        raise BuildError(f"{raw_root} holds none of the raw folders {sorted(RAW_FOLDERS.values())}")
    names = sorted({loc for folder in present.values() for loc in os.listdir(folder)
                    if os.path.isdir(os.path.join(folder, loc))})
    locations = []
    for name in names:
        stamps: dict[str, list[RawTimestamp]] = {}
        for mod in RAW_FOLDERS:
            base = os.path.join(present.get(mod, ""), name)
            if mod not in present or not os.path.isdir(base):
                stamps[mod] = []
                continue
            seasons = [os.path.join(base, s) for s in sorted(os.listdir(base)) if os.path.isdir(os.path.join(base, s))]
            stamps[mod] = sorted((read_timestamp(s) for s in seasons), key=lambda r: r.time)
        locations.append(RawLocation(name, stamps))
    return locations


def location_id(name: str) -> str:
    """7-digit sample id of a raw location folder name (``80717`` or ``0080717``)."""
    digits = re.sub(r"\D", "", name)
    if not digits:
        raise BuildError(f"raw location folder {name!r} has no numeric id")
    return schema.sample_id(int(digits))
