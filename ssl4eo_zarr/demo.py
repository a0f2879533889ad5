"""``ssl4eo-zarr demo``: the whole read path on built-in synthetic data, end to end."""

from __future__ import annotations

import os
import time
from typing import Any


def _demo_build(folder: str, n_locations: int, size: int, seed: int, log) -> None:
    """The builder's path: synthetic raw GeoTIFFs -> chunk files."""
    import shutil

    from .builder import build_dataset
    from .synthetic import make_raw

    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    make_raw(os.path.join(folder, "raw"), n_locations, size=size, seed=seed)
    log(f"\nraw GeoTIFFs for {n_locations} locations (10/20/60 m bands, UTM and EPSG:4326, NaN holes, "
        f"a UTM-zone straddler) in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    manifest = build_dataset(os.path.join(folder, "raw"), os.path.join(folder, "built"), size=size, workers=0,
                             seed=seed, val_fraction=0.25)
    s = manifest["summary"]
    log(f"build: {s['written']} written, {s['dropped']} dropped, files train {s['files']['train']} / val "
        f"{s['files']['val']} in {time.perf_counter() - t0:.1f} s -> {folder}/built (manifest.json says why)")
    for name, entry in manifest["locations"].items():
        if entry["status"] == "dropped":
            log(f"  dropped {name}: {entry['reason']}")


def _demo_shards(folder: str, n_locations: int, size: int, seed: int, workers: int, log) -> int:
    """The WebDataset distribution: seven-modality shards, streamed with the same loader and viewed lazily."""
    import shutil

    from torch.utils.data import DataLoader

    from . import ChunkDataset, open_dataset
    from .synthetic import make_shards

    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    written = make_shards(folder, n_locations, per_shard=max(n_locations // 3, 1), size=size, seed=seed, split="val")
    log(f"\nWebDataset shards: {len(written['S2L2A'])} per modality x {len(written)} modalities under {folder}/val "
        f"in {time.perf_counter() - t0:.1f} s")
    view = open_dataset(folder, split="val")
    log(f"open_dataset over shards: {view.sizes['sample']} locations, modalities {view.attrs['modalities']}")
    loader = ChunkDataset(folder, split="val", modalities=["S2L1C", "S2L2A", "S1GRD", "DEM"], batch_size=8,
                          timestamps="random", return_metadata=True)
    t0 = time.perf_counter()
    n = 0
    shapes = None
    for batch in DataLoader(loader, batch_size=None, num_workers=workers):
        n += len(batch["sample"])
        shapes = shapes or {k: list(batch[k].shape) for k in ("S2L1C", "S1GRD", "DEM", "cloud_mask")}
    log(f"ChunkDataset over shards (one random season per location): {n} locations in "
        f"{time.perf_counter() - t0:.2f} s; shapes {shapes}")
    return n


def run_demo(out: str = "ssl4eo-demo", *, n_files: int = 3, samples: int = 16, size: int = 264, workers: int = 2,
             seed: int = 0, build_locations: int = 4, log=print) -> dict:
    """Make a demo dataset under ``out``, build chunk files from synthetic raw GeoTIFFs (``build_locations`` of
    them, under ``out/from-raw``), open the dataset lazily, validate it, stream one epoch through
    :class:`~ssl4eo_zarr.ChunkDataset` with ``workers`` DataLoader processes and write ``out/quicklook.png``.

    Returns a dict of what it measured (``samples_per_s``, ``batches``, ``quicklook`` path).
    """
    from . import ChunkDataset, open_dataset
    from .summary import describe
    from .synthetic import make_dataset
    from .validate import validate

    t0 = time.perf_counter()
    names = make_dataset(out, n_files=n_files, samples=samples, size=size, seed=seed, split="val")
    log(f"made {len(names)} chunk files x 4 modalities under {out}/val in {time.perf_counter() - t0:.1f} s")
    if build_locations:
        _demo_build(os.path.join(out, "from-raw"), build_locations, size, seed, log)

    ds = open_dataset(out, split="val")
    log("\n" + describe(out, split="val"))
    log(f"\nlazy multi-modal Dataset (dask):\n{ds}\n")

    report = validate(out, split="val", size=size)
    log(f"validate: {report.format().splitlines()[-1]}")

    from torch.utils.data import DataLoader

    loader_ds = ChunkDataset(out, split="val", batch_size=None, return_metadata=True)
    t0 = time.perf_counter()
    n_batches = n_samples = 0
    first = None
    for batch in DataLoader(loader_ds, batch_size=None, num_workers=workers):
        n_batches += 1
        n_samples += batch["S2L2A"].shape[0] * batch["S2L2A"].shape[1]
        first = first or {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in batch.items()
                          if hasattr(v, "shape")}
    elapsed = time.perf_counter() - t0
    log(f"ChunkDataset: {n_batches} batches, {n_samples} patch-timestamps in {elapsed:.2f} s "
        f"({n_samples / elapsed:.0f}/s with {workers} workers)")
    for key, (shape, dtype) in (first or {}).items():
        log(f"  {key:11s} {dtype:8s} {list(shape)}")

    result: dict[str, Any] = {"samples_per_s": n_samples / elapsed, "batches": n_batches, "quicklook": None}
    result["shards"] = _demo_shards(os.path.join(out, "shards"), n_files * samples, size, seed, workers, log)
    try:
        import matplotlib

        matplotlib.use("Agg")
        from .plot import quicklook
    except ImportError:
        log("matplotlib is not installed: no quicklook (pip install 'ssl4eo-zarr[plot]')")
        return result
    path = os.path.join(out, "quicklook.png")
    quicklook(ds, 0).savefig(path, dpi=100, bbox_inches="tight")
    log(f"quicklook of location {str(ds['sample'].values[0])}: {path}")
    result["quicklook"] = path
    return result
