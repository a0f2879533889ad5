"""The build driver: plans the two phases, runs them on an executor, keeps the manifest.

Two planned phases, each a set of independent tasks:

1. **per location** (:func:`~ssl4eo_zarr.builder.location.process_location`): choose the majority UTM zone of
   the S2 timestamps, resample every band of every timestamp onto the 264 x 264 px 10 m grid (nearest for S2,
   bilinear for S1), drop the location if any timestamp/channel misses > 1 % of its pixels, fill the rest by
   nearest neighbour, encode (S2 DN + 1000 as int16, S1 dB as float16), derive RGB, attach cloud masks. The
   result is staged on disk, so memory stays bounded and a rerun skips it;
2. **per output file**: kept locations are split (spatially disjoint 1-degree blocks, or a given list),
   shuffled with the seed, cut into 64-location files and written with :func:`ssl4eo_zarr.write_chunk`
   (atomic), four modalities each.

A manifest (``OUT/manifest.json``) records every input location as written (split, file, index) or dropped
(reason); it is rewritten atomically after every file, so a killed build resumes where it stopped and a
finished build reruns as a no-op. A lock file stops a second build from writing into the same folder.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import schema
from ..errors import BuildError
from ..layout import write_split_list
from ..storage import atomic_write
from ..storage.lock import BuildLock, write_json
from ..writer import write_chunk
from .executor import Executor
from .location import Processed, load, process_location, save
from .manifest import MANIFEST, load_manifest
from .pack import FilePlan, assign_splits, chunk_datasets, metadata_rows, plan_files
from .raw import RawLocation, discover

STAGING = ".staging"
TABLE = "ssl4eos12_metadata.parquet"


def _facts(p: Processed) -> dict[str, Any]:
    """What the driver needs of a staged location (kept in the manifest, so a resume reads no image data)."""
    return {"sample": p.sample, "lat": p.lat, "lon": p.lon, "cloud_source": p.cloud_source}


def stage_location(loc: RawLocation, staging: str, size: int, cloud_policy: str) -> dict[str, Any]:
    """Phase-1 task: process one location, stage it, return its status (small, goes back to the driver)."""
    path = os.path.join(staging, f"{loc.location}.npz")
    sidecar = path[: -len(".npz")] + ".facts.json"
    if os.path.exists(path):
        try:
            with open(sidecar, encoding="utf-8") as f:
                return {"name": loc.location, "status": "staged", **json.load(f)}
        except (OSError, ValueError):  # staged by an older version: learn the facts once from the arrays
            return {"name": loc.location, "status": "staged", **_facts(load(path))}
    p = process_location(loc, size=size, cloud_policy=cloud_policy)
    if p.reason:
        return {"name": loc.location, "status": "dropped", "reason": p.reason}
    t0 = time.perf_counter()
    save(p, path)
    write_json(sidecar, _facts(p))  # after the arrays: a sidecar always means a complete .npz
    p.timings["stage"] = time.perf_counter() - t0
    return {"name": loc.location, "status": "staged", **_facts(p), "timings": p.timings}


def write_file(plan: FilePlan, out: str, staging: str, size: int) -> tuple[str, dict[str, float]]:
    """Phase-2 task: stack the plan's staged locations and write the four modality files."""
    t0 = time.perf_counter()
    locs: list[Processed] = [load(os.path.join(staging, f"{n}.npz")) for n in plan.locations]
    t1 = time.perf_counter()
    for mod, ds in chunk_datasets(locs).items():
        write_chunk(ds, os.path.join(out, plan.split, mod, plan.name), modality=mod, size=size)
    with open(os.path.join(staging, f"{plan.name}.{plan.split}.rows.pkl"), "wb") as f:
        pickle.dump(metadata_rows(locs, plan.name), f)
    return f"{plan.split}/{plan.name}", {"unstage": t1 - t0, "write": time.perf_counter() - t1}


def build_dataset(
    raw: str,
    out: str,
    *,
    seed: int = 0,
    size: int = schema.PATCH_SIZE,
    workers: int = 2,
    scheduler: str | None = None,
    cloud_mask: str = "auto",
    val_fraction: float = 0.01,
    val_locations: Sequence[str] | None = None,
    drop_remainder: bool = False,
    keep_staging: bool = False,
    progress: Callable | None = None,
) -> dict:
    """Build SSL4EO-S12 v1.1 chunk files under ``out`` from the raw layout under ``raw``; returns the manifest.

    Parameters
    ----------
    raw:
        Folder with ``s1/``, ``s2a/``, ``s2c/`` (see :mod:`ssl4eo_zarr.builder.raw`).
    out:
        Dataset root to write (``{split}/{modality}/*.zarr.zip``, ``splits/*.txt``, ``manifest.json``,
        ``ssl4eos12_metadata.parquet``).
    seed:
        Shuffles locations before stacking; the same input and seed give identical arrays.
    size:
        Patch edge in px at 10 m (264 as published).
    workers, scheduler:
        ``workers`` processes of a LocalCluster, or an existing dask scheduler address; ``workers=0`` runs
        in this process. Workers must see ``raw`` and ``out`` under the same paths.
    cloud_mask:
        ``"auto"``, ``"file"``, ``"scl"``, ``"sensei"`` or an explicit ``"fallback:land"``/``"fallback:no-data"``.
    val_fraction, val_locations:
        Spatially disjoint validation split (share of locations), or an explicit list of raw location names.
    drop_remainder:
        Drop the locations that do not fill a last 64-location file (recorded) instead of writing a smaller file.
    """
    raw, out = os.path.abspath(raw), os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    settings = {"raw": raw, "seed": seed, "size": size, "cloud_mask": cloud_mask, "val_fraction": val_fraction,
                "val_locations": sorted(val_locations) if val_locations else None, "drop_remainder": drop_remainder}
    with BuildLock(out):
        manifest_path = os.path.join(out, MANIFEST)
        manifest = load_manifest(out, settings)
        staging = os.path.join(out, STAGING)
        os.makedirs(staging, exist_ok=True)
        _remove_stale_temporaries(out)
        locations = discover(raw)
        runner = Executor(workers, scheduler)
        timings: dict[str, float] = {}

        def stage(todo: list[RawLocation]) -> None:
            results = runner.map(stage_location, todo, staging, size, cloud_mask, keys=[f"stage-{loc.location}"
                                                                                         for loc in todo])
            if progress:
                results = progress(results, total=len(todo), desc="locations", unit="loc")
            for status in results:
                for k, v in status.pop("timings", {}).items():
                    timings[k] = timings.get(k, 0.0) + v
                entry = manifest["locations"].get(status["name"], {})
                if entry.get("status") != "written" or status["status"] == "dropped":
                    manifest["locations"][status["name"]] = status
            write_json(manifest_path, manifest)

        def known(name: str) -> bool:
            # Dropped, or staged/written with the facts the plan needs: a resume reads none of these again.
            entry = manifest["locations"].get(name, {})
            return entry.get("status") == "dropped" or (entry.get("status") in ("staged", "written") and "lat" in entry)

        try:
            stage([loc for loc in locations if not known(loc.location)])

            kept = {n: (e["lat"], e["lon"]) for n, e in manifest["locations"].items() if e["status"] != "dropped"}
            if not kept:
                raise BuildError(f"no location of {raw} survived: see the reasons in {manifest_path}")
            splits = assign_splits(kept, seed=seed, val_fraction=val_fraction, val_locations=val_locations)
            plans, remainder = plan_files(splits, seed=seed, drop_remainder=drop_remainder)
            for name in remainder:
                manifest["locations"][name] = {**manifest["locations"][name], "status": "dropped",
                                               "reason": "remainder of fewer than 64 locations (--drop-remainder)"}

            def done(plan: FilePlan) -> bool:
                entry = manifest["files"].get(f"{plan.split}/{plan.name}", {})
                return entry.get("locations") == list(plan.locations) and entry.get("complete") and all(
                    os.path.exists(os.path.join(out, plan.split, m, plan.name)) for m in schema.CHUNK_MODALITIES)

            pending = [p for p in plans if not done(p)]
            needed = {n for p in pending for n in p.locations}
            # Files still to write need their locations staged; those staged no more (finished builds remove
            # the staging folder) are processed again from the raw input.
            stage([loc for loc in locations if loc.location in needed
                   and not os.path.exists(os.path.join(staging, f"{loc.location}.npz"))])
            by_name = {f"{p.split}/{p.name}": p for p in plans}
            results = runner.map(write_file, pending, out, staging, size,
                                 keys=[f"write-{p.split}-{p.name}" for p in pending])
            if progress:
                results = progress(results, total=len(pending), desc="files", unit="file")
            for key, spent in results:
                for k, v in spent.items():
                    timings[k] = timings.get(k, 0.0) + v
                p = by_name[key]
                manifest["files"][key] = {"split": p.split, "locations": list(p.locations), "complete": True}
                for index, loc in enumerate(p.locations):
                    manifest["locations"][loc] = {**manifest["locations"][loc], "status": "written",
                                                  "split": p.split, "file": p.name, "index": index}
                write_json(manifest_path, manifest)
        finally:
            runner.close()
        _finish(out, plans, staging, keep_staging)
        manifest["timings_s"] = {k: round(v, 3) for k, v in timings.items()}  # summed over tasks (CPU seconds)
        manifest["summary"] = {
            "locations": len(manifest["locations"]),
            "written": sum(e["status"] == "written" for e in manifest["locations"].values()),
            "dropped": sum(e["status"] == "dropped" for e in manifest["locations"].values()),
            "files": {s: sum(p.split == s for p in plans) for s in ("train", "val")},
        }
        write_json(manifest_path, manifest)
        return manifest


def _remove_stale_temporaries(out: str) -> None:
    # A killed build can leave temporary files (never under a final name); only a lock holder may remove them.
    for folder, _, files in os.walk(out):
        for name in files:
            if name.endswith(".tmp"):
                os.unlink(os.path.join(folder, name))


def _finish(out: str, plans: list[FilePlan], staging: str, keep_staging: bool) -> None:
    for split in ("train", "val"):
        write_split_list(out, split, [p.name for p in plans if p.split == split])
    rows_files = [os.path.join(staging, f"{p.name}.{p.split}.rows.pkl") for p in plans]
    if all(os.path.exists(r) for r in rows_files):
        rows = []
        for r in rows_files:
            with open(r, "rb") as f:
                rows.extend(pickle.load(f))
        try:
            import geopandas as gpd
        except ImportError:  # the table is optional; the chunk files are complete without it
            gpd = None
        if gpd is not None and rows:
            table = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
            with atomic_write(os.path.join(out, TABLE)) as f:
                table.to_parquet(f)
    if not keep_staging:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
