"""Getting only what you need from a slow static host: fetch, the index it plans from, and the streaming cache.

    python benchmarks/fetch.py [--shards 20] [--per-shard 64] [--latency 0.05] [--bandwidth 100e6]
                               [--data bench-data/fetch] [--fraction 0.02] [--workers 2]

A loopback static host (``ssl4eo_zarr.testing.ServerProcess``: files only, no folder listing, Range) with
``latency`` seconds added to every request and one link of ``bandwidth`` bytes/s shared by all responses, serving
a split of ``shards`` WebDataset shards of S2L2A + S1GRD with ``per_shard`` full-size members each (264 px, four
timestamps; 8 distinct locations repeated under distinct keys, so generating the data takes seconds) and a
metadata table at the root.

(i)   fetch ``fraction`` of the locations by id and by bounding box: bytes moved against the selected members
      (target <= 1.05 x members + the index) and time against downloading the whole shards of those modalities
      (what ``hf download --include`` does), both measured;
(ii)  the index: requests and bytes per shard to plan from tar headers, cold (no kept index);
(iii) ``ChunkDataset(url, cache_dir=...)``: bytes moved by epoch 2 against epoch 1 (target <= 1 %) and epoch 2's
      speed against the same shards read locally (target >= 0.9), configurations interleaved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import machine  # noqa: E402

MODS = ("S2L2A", "S1GRD")


def ensure_data(folder: str, n_shards: int, per_shard: int) -> str:
    """The split (``folder/val``) and its metadata table; generated once."""
    from ssl4eo_zarr import schema, synthetic
    from ssl4eo_zarr.shardfile import scan_shard, write_shard

    last = os.path.join(folder, "val", MODS[-1], schema.shard_name(n_shards))
    table = os.path.join(folder, "val_metadata.parquet")
    if os.path.exists(last) and os.path.exists(table):
        return folder
    t0 = time.perf_counter()
    seed_dir = tempfile.mkdtemp(prefix="fetch-seed-")
    synthetic.make_shards(seed_dir, 8, per_shard=8, size=264, seed=1, modalities=MODS)
    members = {}
    for m in MODS:
        path = os.path.join(seed_dir, "val", m, schema.shard_name(1))
        with open(path, "rb") as f:
            members[m] = []
            for member in scan_shard(path):
                f.seek(member.offset)
                members[m].append(f.read(member.size))
    rng = np.random.default_rng(0)
    keys = [f"{k:07d}" for k in rng.choice(10**7, size=n_shards * per_shard, replace=False)]
    for m in MODS:
        for s in range(n_shards):
            part = keys[s * per_shard: (s + 1) * per_shard]
            write_shard(os.path.join(folder, "val", m, schema.shard_name(s + 1)),
                        [(f"{k}.zarr.zip", members[m][j % 8]) for j, k in enumerate(part)])
    _write_table(table, keys, rng)
    shutil.rmtree(seed_dir)
    print(f"generated {n_shards} x {per_shard} full-size locations in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return folder


def _write_table(path: str, keys: list[str], rng) -> None:
    import geopandas as gpd
    from shapely.geometry import Point

    n = len(keys)
    lon, lat = rng.uniform(-180, 180, n), rng.uniform(-60, 70, n)
    data = {"sample_id": keys, "split": ["val"] * n, "center_lon": lon, "center_lat": lat,
            "crs": np.full(n, 32633)}
    for t in range(4):
        data[f"S2_time_{t}"] = np.full(n, np.datetime64("2021-03-20") + np.timedelta64(91 * t, "D"))
        data[f"cloud_cover_{t}"] = rng.uniform(0, 0.3, n)
    gpd.GeoDataFrame(data, geometry=[Point(x, y) for x, y in zip(lon, lat)], crs="EPSG:4326").to_parquet(path)


def bbox_for(table, fraction: float) -> tuple[float, float, float, float]:
    """A longitude band holding about ``fraction`` of the locations."""
    lon = np.sort(table["center_lon"].to_numpy())
    k = max(1, int(round(fraction * len(lon))))
    start = len(lon) // 3
    return (float(lon[start]) - 1e-9, -90.0, float(lon[start + k - 1]) + 1e-9, 90.0)


def timed_fetch(server, dest: str, **kwargs) -> dict:
    from ssl4eo_zarr.fetching import fetch

    shutil.rmtree(dest, ignore_errors=True)
    server.reset_counts()
    t0 = time.perf_counter()
    result = fetch(server.url, dest, split="val", modalities=list(MODS), **kwargs)
    seconds = time.perf_counter() - t0
    moved, requests = server.counts()
    return {"seconds": seconds, "moved": moved, "requests": requests, "members": result.nbytes,
            "locations": result.locations}


def download_whole(server, folder: str, n_shards: int, workers: int) -> dict:
    """The baseline: every shard of both modalities downloaded whole (``workers`` streams at once)."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from ssl4eo_zarr import schema

    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    server.reset_counts()
    t0 = time.perf_counter()

    def one(job):
        m, s = job
        with urllib.request.urlopen(f"{server.url}/val/{m}/{schema.shard_name(s)}") as r, \
                open(os.path.join(folder, f"{m}_{s}.tar"), "wb") as f:
            shutil.copyfileobj(r, f, 1 << 22)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, [(m, s) for m in MODS for s in range(1, n_shards + 1)]))
    seconds = time.perf_counter() - t0
    moved, requests = server.counts()
    shutil.rmtree(folder)
    return {"seconds": seconds, "moved": moved, "requests": requests}


def index_cost(server, root: str, n_shards: int) -> dict:
    """Planning from tar headers with no kept index: requests and bytes per shard."""
    import ssl4eo_zarr.storage.paths as paths
    from ssl4eo_zarr.fetching import plan_fetch

    cache = tempfile.mkdtemp(prefix="fetch-index-")
    os.environ["SSL4EO_ZARR_CACHE"] = cache
    assert paths.cache_dir() == cache
    server.reset_counts()
    t0 = time.perf_counter()
    plan = plan_fetch(server.url, split="val", modalities=list(MODS), locations=None, workers=8)
    seconds = time.perf_counter() - t0
    moved, requests = server.counts()
    return {"seconds": seconds, "moved": moved, "requests": requests, "per_shard_requests": requests / (n_shards * 2),
            "per_shard_bytes": moved / (n_shards * 2), "locations": len(plan.selected)}


def stream_epochs(source: str, cache_dir: str | None, workers: int, epochs: int, server=None) -> list[dict]:
    import torch
    from torch.utils.data import DataLoader

    import ssl4eo_zarr as sz

    ds = sz.ChunkDataset(source, split="val", modalities=list(MODS), batch_size=32, timestamps="all",
                         cache_dir=cache_dir, shuffle_buffer=64)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=True)
    out = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        if server is not None:
            server.reset_counts()
        t0 = time.perf_counter()
        n = 0
        for batch in loader:
            n += batch["S2L2A"].shape[0] * batch["S2L2A"].shape[1]
            torch.sum(batch["S2L2A"][:, :, 0, 0, 0])
        seconds = time.perf_counter() - t0
        moved = server.counts()[0] if server is not None else 0
        out.append({"seconds": seconds, "rate": n / seconds, "moved": moved})
    del loader
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--bandwidth", type=float, default=100e6)
    parser.add_argument("--fraction", type=float, default=0.02)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", default="bench-data/fetch")
    args = parser.parse_args()

    import ssl4eo_zarr as sz
    from ssl4eo_zarr.testing import ServerProcess

    root = ensure_data(args.data, args.shards, args.per_shard)
    table = sz.read_metadata(os.path.join(root, "val_metadata.parquet"))
    n = len(table)
    k = max(1, int(round(args.fraction * n)))
    ids = sorted(np.random.default_rng(7).choice(table.index.to_numpy(), size=k, replace=False).tolist())
    bbox = bbox_for(table, args.fraction)
    work = tempfile.mkdtemp(prefix="fetch-bench-")
    print(f"# {machine()}\n# {args.shards} shards x {args.per_shard} locations x {', '.join(MODS)}; host: "
          f"{args.latency * 1000:.0f} ms per request, {args.bandwidth / 1e6:.0f} MB/s; {k} locations "
          f"({args.fraction:.0%})")
    with ServerProcess(root, latency=args.latency, bandwidth=args.bandwidth) as server:
        index = index_cost(server, root, args.shards)
        print(f"(ii) index, cold: {index['per_shard_requests']:.1f} requests and {index['per_shard_bytes'] / 1e3:.1f} kB "
              f"per shard ({index['requests']} requests, {index['moved'] / 1e6:.2f} MB, {index['seconds']:.1f} s "
              f"for {args.shards * 2} shards)")
        rows: dict[str, list[dict]] = {"by id": [], "by bbox": [], "whole shards": []}
        for _ in range(args.rounds):  # interleaved: the VM's speed drifts
            rows["by id"].append(timed_fetch(server, os.path.join(work, "ids"), locations=ids, workers=8))
            rows["by bbox"].append(timed_fetch(server, os.path.join(work, "bbox"), bbox=bbox, workers=8))
            rows["whole shards"].append(download_whole(server, os.path.join(work, "whole"), args.shards, 8))
        whole = min(r["seconds"] for r in rows["whole shards"])
        print("\n| (i) configuration | locations | members MB | moved MB | moved / members | requests "
              "| s (best) | vs whole shards |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, runs in rows.items():
            best = min(runs, key=lambda r: r["seconds"])
            members = best.get("members")
            ratio = best["moved"] / members if members else float("nan")  # the index is kept: planning costs HEADs
            print(f"| {name} | {best.get('locations', n)} | {members / 1e6 if members else float('nan'):.1f} | "
                  f"{best['moved'] / 1e6:.1f} | {ratio:.4f} | {best['requests']} | {best['seconds']:.1f} | "
                  f"{whole / best['seconds']:.1f} x |")
        # (iii): local vs cached remote, interleaved
        local = stream_epochs(root, None, args.workers, 2)
        cache = os.path.join(work, "cache")
        remote = stream_epochs(server.url, cache, args.workers, 2, server=server)
        local2 = stream_epochs(root, None, args.workers, 2)
        remote2 = stream_epochs(server.url, cache, args.workers, 2, server=server)
    steady_local = max(e["rate"] for e in local[1:] + local2[1:])
    steady_remote = max(remote[1]["rate"], remote2[0]["rate"], remote2[1]["rate"])
    print(f"\n(iii) streaming with cache_dir: epoch 1 moved {remote[0]['moved'] / 1e6:.1f} MB in "
          f"{remote[0]['seconds']:.1f} s ({remote[0]['rate']:.0f} patch-timestamps/s); epoch 2 moved "
          f"{remote[1]['moved'] / 1e6:.3f} MB = {remote[1]['moved'] / remote[0]['moved']:.4%} of epoch 1; "
          f"cached epochs {steady_remote:.0f}/s vs local {steady_local:.0f}/s = {steady_remote / steady_local:.2f} x "
          f"(local first epoch {local[0]['rate']:.0f}/s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
