"""Loader throughput on full-size chunk files (64 locations x 4 seasons x 264 x 264 px), all configurations in one run.

    python benchmarks/loader.py [--files 6] [--workers 2] [--data bench-data] [--json out.json]

Configurations (S2L1C + S2L2A + S1GRD unless noted):
  1. raw limit: read + decode the ``bands`` chunks with zipfile + numcodecs in ``workers`` processes;
  2. baseline: a map-style loader that opens each file per modality with xarray, takes ``.values``, converts to
     float32 and concatenates modalities (what the published loaders do);
  3. ChunkDataset, native dtypes (reused shared-memory arenas, the default);
  4. ChunkDataset, float32 normalised in the worker;
  5. ChunkDataset, one timestamp;
  6. ChunkDataset, native dtypes, fresh buffers for every batch (``buffer_slots=0``, the previous behaviour).
Reported: patch-timestamps/s (locations x timestamps delivered per second), ratios, time to first batch and
peak RSS (VmHWM) per worker process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import zipfile

import numpy as np

MODS = ("S2L1C", "S2L2A", "S1GRD")


def ensure_data(folder: str, n_files: int) -> list[str]:
    from ssl4eo_zarr import schema
    from ssl4eo_zarr.synthetic import make_dataset

    names = [schema.chunk_file_name("train", i + 1) for i in range(n_files)]
    if not all(os.path.exists(os.path.join(folder, "train", m, n)) for m in MODS for n in names):
        t0 = time.perf_counter()
        make_dataset(folder, n_files=n_files, samples=64, size=264, seed=0, split="train", modalities=MODS)
        print(f"generated {n_files} full-size chunk files in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    # The split lists exactly these files, so the loaders read what the raw loop reads (a folder made with more
    # files than this run asks for keeps them).
    listing = os.path.join(folder, schema.split_list_name("train"))
    with open(listing, "w") as f:
        f.write("".join(n + "\n" for n in names))
    return names


def _raw_worker(paths: list[str]) -> tuple[int, float]:
    import numcodecs

    from ssl4eo_zarr.storage import ZipArchive
    from ssl4eo_zarr.zarrv2 import read_group

    n = 0
    for path in paths:
        meta = read_group(ZipArchive(path)).arrays["bands"]
        codec = numcodecs.get_codec(meta.compressor)
        with zipfile.ZipFile(path) as zf:
            for t in range(meta.shape[1]):
                raw = zf.read(f"bands/0.{t}.0.0.0")
                np.frombuffer(codec.decode(raw), dtype=meta.dtype)
        if path.split(os.sep)[-2] == MODS[0]:
            n += meta.shape[0] * meta.shape[1]
    return n, _peak_rss_self()


def _peak_rss_self() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def bench_raw(root: str, names: list[str], workers: int) -> dict:
    paths = [[os.path.join(root, "train", m, n) for n in names[w::workers] for m in MODS] for w in range(workers)]
    ctx = mp.get_context("fork")
    t0 = time.perf_counter()
    with ctx.Pool(workers) as pool:
        results = pool.map(_raw_worker, paths)
    elapsed = time.perf_counter() - t0
    n = sum(r[0] for r in results)
    return {"name": "raw zipfile + numcodecs", "samples": n, "seconds": elapsed, "first_batch_s": float("nan"),
            "peak_rss_mb": max(r[1] for r in results)}


class BaselineDataset:
    """The published approach: per batch, open each modality file with xarray, .values, float32, concatenate."""

    def __init__(self, root: str, names: list[str]):
        self.root, self.names = root, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        import torch
        import xarray as xr

        from ssl4eo_zarr.storage import zarr_open_kwargs, zarr_store

        arrays = []
        for m in MODS:
            path = os.path.join(self.root, "train", m, self.names[i])
            ds = xr.open_zarr(zarr_store(path), **zarr_open_kwargs())
            arrays.append(ds["bands"].values.astype(np.float32))
        return torch.from_numpy(np.concatenate(arrays, axis=2))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux); NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _consume(loader, count_fn, on_batch=None) -> dict:
    t0 = time.perf_counter()
    cpu0 = cpu_seconds(os.getpid())
    it = iter(loader)
    workers = {proc.pid: cpu_seconds(proc.pid) for proc in getattr(it, "_workers", [])}
    seen = dict(workers)
    first = None
    n = 0
    peaks: dict[int, float] = {}
    for batch in it:
        if first is None:
            first = time.perf_counter() - t0
        if on_batch is not None:
            on_batch(batch)
        n += count_fn(batch)
        for proc in getattr(it, "_workers", []):
            peaks[proc.pid] = max(peaks.get(proc.pid, 0.0), _peak_rss(proc.pid))
            seen[proc.pid] = cpu_seconds(proc.pid)  # the last reading before the worker ends
        del batch
    elapsed = time.perf_counter() - t0
    # The loading side's CPU (consumer + workers), without a test server in another process.
    client_cpu = cpu_seconds(os.getpid()) - cpu0 + sum(seen[p] - workers.get(p, 0.0) for p in seen)
    return {"samples": n, "seconds": elapsed, "first_batch_s": first, "client_cpu_s": client_cpu,
            "peak_rss_mb": max(peaks.values(), default=float("nan"))}


def bench_baseline(root: str, names: list[str], workers: int) -> dict:
    from torch.utils.data import DataLoader

    loader = DataLoader(BaselineDataset(root, names), batch_size=None, num_workers=workers, prefetch_factor=1,
                        multiprocessing_context="fork")
    out = _consume(loader, lambda b: b.shape[0] * b.shape[1])
    return {"name": "baseline: xarray per modality, float32, concat", **out}


def bench_chunkdataset(root: str, workers: int, name: str, epochs: int = 3, **kwargs) -> dict:
    """Steady state of a long epoch: persistent workers over ``epochs`` epochs, all but the first timed (a
    6-file epoch gives each worker 3 batches, too few for the reused arenas to come round)."""
    from torch.utils.data import DataLoader

    from ssl4eo_zarr import ChunkDataset

    ds = ChunkDataset(root, split="train", modalities=MODS, seed=0, **kwargs)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context="fork",
                        persistent_workers=epochs > 1)

    def count(batch) -> int:
        x = batch["S2L1C"]
        return x.shape[0] * (x.shape[1] if x.ndim == 5 else 1)

    runs = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        runs.append(_consume(loader, count))
    timed = runs[1:] or runs
    out = {"samples": sum(r["samples"] for r in timed), "seconds": sum(r["seconds"] for r in timed),
           "client_cpu_s": sum(r["client_cpu_s"] for r in timed),
           "first_batch_s": runs[0]["first_batch_s"], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
           "first_epoch_per_s": runs[0]["samples"] / runs[0]["seconds"]}
    del loader
    return {"name": name, **out}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Linux {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", default="bench-data")
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best round of each configuration counts")
    args = parser.parse_args()

    import torch
    import xarray
    import zarr

    names = ensure_data(args.data, args.files)
    w = args.workers
    configs = [
        lambda: bench_raw(args.data, names, w),
        lambda: bench_baseline(args.data, names, w),
        lambda: bench_chunkdataset(args.data, w, "ChunkDataset, native dtypes"),
        lambda: bench_chunkdataset(args.data, w, "ChunkDataset, float32 normalised", normalize=True),
        lambda: bench_chunkdataset(args.data, w, "ChunkDataset, one timestamp", timestamps=0),
        lambda: bench_chunkdataset(args.data, w, "ChunkDataset, native, fresh buffers", buffer_slots=0),
    ]
    rounds = [[config() for config in configs] for _ in range(max(args.repeat, 1))]  # interleaved: same conditions
    runs = [min((r[i] for r in rounds), key=lambda x: x["seconds"]) for i in range(len(configs))]
    raw, base, native, f32, one, fresh = runs
    for r in runs:
        r["per_s"] = r["samples"] / r["seconds"]
    per_location = {r["name"]: r["seconds"] / (r["samples"] / (1 if r is one else 4)) for r in runs}
    print(f"\nmachine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d')}; python {platform.python_version()}, torch {torch.__version__}, "
          f"zarr {zarr.__version__}, xarray {xarray.__version__}; {args.files} files x 64 locations x 4 timestamps, "
          f"{w} worker processes\n")
    print("| configuration | patch-timestamps/s | vs raw | vs baseline | first batch (s) | peak RSS/worker (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(f"| {r['name']} | {r['per_s']:.0f} | {r['per_s'] / raw['per_s']:.2f} | {r['per_s'] / base['per_s']:.2f} | "
              f"{r['first_batch_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    print("\nChunkDataset rows: epochs 2-3 with persistent workers (steady state); first epochs "
          + ", ".join(f"{r['name']}: {r['first_epoch_per_s']:.0f}/s" for r in runs if "first_epoch_per_s" in r))
    ratio_one = per_location[one["name"]] / per_location[native["name"]]
    chunk_set_mb = 64 * 4 * (13 + 12 + 2) * 264 * 264 * 2 / 2**20  # int16 and float16: 2 bytes a value
    print(f"\none timestamp costs {ratio_one:.2f} of all four per location (target <= 0.35)")
    print(f"native vs raw {native['per_s'] / raw['per_s']:.2f} (target >= 1.5); "
          f"native vs baseline {native['per_s'] / base['per_s']:.1f} (target >= 8); "
          f"reused vs fresh buffers {native['per_s'] / fresh['per_s']:.2f}")
    print(f"one decoded chunk set (3 modalities, 4 timestamps) = {chunk_set_mb:.0f} MB; "
          f"peak RSS per worker {native['peak_rss_mb']:.0f} MB = {native['peak_rss_mb'] / chunk_set_mb:.2f} x (target <= 3)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "runs": runs, "one_timestamp_ratio": ratio_one}, f, indent=2)


if __name__ == "__main__":
    main()
