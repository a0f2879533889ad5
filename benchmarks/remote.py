"""ChunkDataset over loopback HTTP (Range requests) vs local files, and bytes moved per batch vs chunk bytes.

    python benchmarks/remote.py [--files 6] [--workers 2] [--data bench-data]

Uses the full-size files of benchmarks/loader.py (generated there if missing) served by
``ssl4eo_zarr.testing.RangeHTTPServer`` on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zipfile

from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import MODS, ensure_data, machine  # noqa: E402

from ssl4eo_zarr import ChunkDataset  # noqa: E402
from ssl4eo_zarr.testing import RangeHTTPServer  # noqa: E402


def run(source: str, workers: int, **kwargs) -> tuple[float, int]:
    ds = ChunkDataset(source, split="train", modalities=MODS, seed=0, **kwargs)
    t0 = time.perf_counter()
    n = batches = 0
    for batch in DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context="fork"):
        x = batch["S2L1C"]
        n += x.shape[0] * (x.shape[1] if x.ndim == 5 else 1)
        batches += 1
    return n / (time.perf_counter() - t0), batches


def chunk_bytes(root: str, names: list[str], timestamps: list[int]) -> int:
    total = 0
    for m in MODS:
        for n in names:
            with zipfile.ZipFile(os.path.join(root, "train", m, n)) as zf:
                total += sum(zf.getinfo(f"bands/0.{t}.0.0.0").compress_size for t in timestamps)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", default="bench-data")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    names = ensure_data(args.data, args.files)
    rows = []
    for label, kwargs, ts in (("all 4 timestamps", {}, [0, 1, 2, 3]), ("one timestamp", {"timestamps": 1}, [1])):
        best_local = best_http = 0.0
        moved = 0
        with RangeHTTPServer(args.data) as server:
            for _ in range(args.repeat):
                best_local = max(best_local, run(args.data, args.workers, **kwargs)[0])
                server.reset_counts()
                rate, batches = run(server.url, args.workers, **kwargs)
                best_http = max(best_http, rate)
                moved, requests = server.bytes_served, server.requests
        needed = chunk_bytes(args.data, names, ts)
        rows.append((label, best_local, best_http, moved / batches, needed / batches, requests / batches))
    print(f"\nmachine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}; {args.files} files, {args.workers} workers\n")
    print("| timestamps | local /s | HTTP /s | HTTP vs local | MB moved per batch | chunk MB per batch | moved / chunk "
          "| requests per batch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, local, http, moved, needed, reqs in rows:
        print(f"| {label} | {local:.0f} | {http:.0f} | {http / local:.2f} | {moved / 2**20:.1f} | {needed / 2**20:.1f} "
              f"| {moved / needed:.4f} | {reqs:.0f} |")


if __name__ == "__main__":
    main()
