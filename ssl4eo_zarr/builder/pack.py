"""Packing: split kept locations, plan 64-location files, stack staged locations into chunk Datasets."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from .. import geo, schema
from .location import Processed


@dataclass(frozen=True)
class FilePlan:
    """One output chunk file: its split, name and the staged location names it holds, in order."""

    split: str
    name: str
    locations: tuple[str, ...]


def _block_key(lat: float, lon: float, block_deg: float) -> tuple[int, int]:
    return int(np.floor(lat / block_deg)), int(np.floor(lon / block_deg))


def assign_splits(kept: Mapping[str, tuple[float, float]], *, seed: int, val_fraction: float = 0.01,
                  val_locations: Sequence[str] | None = None, block_deg: float = 1.0) -> dict[str, str]:
    """``{location: "train" | "val"}``.

    With ``val_locations`` those go to val. Otherwise whole ``block_deg`` x ``block_deg`` degree blocks go to
    val (in a seeded order) until at least ``val_fraction`` of the locations are there, so train and val
    never share a block (spatially disjoint).
    """
    if val_locations is not None:
        chosen = set(val_locations)
        return {name: "val" if name in chosen else "train" for name in kept}
    blocks: dict[tuple[int, int], list[str]] = {}
    for name, (lat, lon) in kept.items():
        blocks.setdefault(_block_key(lat, lon, block_deg), []).append(name)

    def rank(key: tuple[int, int]) -> str:
        return hashlib.sha256(f"{seed}:{key[0]}:{key[1]}".encode()).hexdigest()

    target = int(np.ceil(val_fraction * len(kept))) if val_fraction > 0 else 0
    out = {name: "train" for name in kept}
    n_val = 0
    for key in sorted(blocks, key=rank):
        if n_val >= target or len(blocks) < 2:
            break
        for name in blocks[key]:
            out[name] = "val"
        n_val += len(blocks[key])
    return out


def plan_files(splits: Mapping[str, str], *, seed: int, drop_remainder: bool = False,
               per_file: int = schema.SAMPLES_PER_FILE) -> tuple[list[FilePlan], list[str]]:
    """Shuffle each split's locations with ``seed`` and cut them into files; returns (plans, dropped remainder)."""
    plans: list[FilePlan] = []
    dropped: list[str] = []
    for split in ("train", "val"):
        names = sorted(n for n, s in splits.items() if s == split)
        order = np.random.default_rng([seed, 1 if split == "val" else 0]).permutation(len(names))
        names = [names[i] for i in order]  # the published files were shuffled before stacking too
        for k, start in enumerate(range(0, len(names), per_file)):
            part = names[start: start + per_file]
            if len(part) < per_file and drop_remainder:
                dropped.extend(part)
                continue
            plans.append(FilePlan(split, schema.chunk_file_name(split, k + 1), tuple(part)))
    return plans, dropped


def chunk_datasets(locs: Sequence[Processed]) -> dict[str, xr.Dataset]:
    """Stack processed locations into one Dataset per modality in the published single-file schema."""
    size = locs[0].x.shape[0]
    ids = np.array([p.sample for p in locs], dtype=f"<U{schema.SAMPLE_ID_WIDTH}")
    coords = {"sample": ids, "time": np.arange(schema.N_TIMESTAMPS, dtype=np.int64),
              "x": np.arange(size, dtype=np.int64), "y": np.arange(size, dtype=np.int64)}
    common = {
        "center_lat": (("sample",), np.array([p.lat for p in locs])),
        "center_lon": (("sample",), np.array([p.lon for p in locs])),
        "crs": (("sample",), np.array([p.epsg for p in locs], dtype=np.int64)),
        "x_": (("sample", "x"), np.stack([p.x for p in locs])),
        "y_": (("sample", "y"), np.stack([p.y for p in locs])),
        "sample_id": (("sample", "time"), np.array([[f"{p.sample}_{t}" for t in range(schema.N_TIMESTAMPS)]
                                                    for p in locs])),
    }
    out = {}
    for mod in (schema.MODALITIES[m] for m in schema.CHUNK_MODALITIES):
        times_from = "S1GRD" if mod.name == "S1GRD" else "S2L2A"
        ids_from = {"S2RGB": "S2L2A"}.get(mod.name, mod.name)
        ds = xr.Dataset({schema.BANDS_VAR: (schema.BANDS_DIMS, np.stack([p.images[mod.name] for p in locs]))},
                        coords={"band": np.array(mod.bands), **coords})
        if mod.has_cloud_mask:
            ds[schema.CLOUD_VAR] = (schema.CLOUD_DIMS, np.stack([p.cloud for p in locs]))
        for k, v in common.items():
            ds[k] = v
        ds["file_id"] = (("sample", "time"), np.array([p.file_ids[ids_from] for p in locs]))
        ds["time_"] = (("sample", "time"), np.stack([p.times[times_from] for p in locs]))
        out[mod.name] = ds
    return out


def metadata_rows(locs: Sequence[Processed], file_name: str) -> list[dict]:
    """Rows of the published metadata table (one per location and timestamp), geometry in EPSG:4326."""
    from shapely.geometry import Polygon

    rows = []
    for p in locs:
        half = (p.x[1] - p.x[0]) / 2
        xs = [p.x[0] - half, p.x[-1] + half, p.x[-1] + half, p.x[0] - half]
        ys = [p.y[0] + half, p.y[0] + half, p.y[-1] - half, p.y[-1] - half]
        lon, lat = geo.utm_to_lonlat(np.array(xs), np.array(ys), p.epsg)
        footprint = Polygon(zip(lon, lat))
        for t in range(schema.N_TIMESTAMPS):
            rows.append({"sample_id": p.sample, "time_id": t, "time": p.times["S2L2A"][t], "tile_id": p.tiles[t],
                         "geometry": footprint, "tile_crs": p.epsg, "file": file_name})
    return rows
