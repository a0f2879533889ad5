"""Build throughput (locations/s) with 1 and 2 dask workers on synthetic raw data, and where the time goes.

    python benchmarks/build.py [--locations 24] [--data bench-raw]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import machine  # noqa: E402

from ssl4eo_zarr.build import build_dataset  # noqa: E402
from ssl4eo_zarr.synthetic import make_raw  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--locations", type=int, default=24)
    parser.add_argument("--data", default="bench-raw")
    args = parser.parse_args()
    raw = os.path.join(args.data, "raw")
    if not os.path.isdir(raw):
        make_raw(raw, args.locations, size=264, seed=0)
    rows = []
    for workers in (0, 1, 2):
        out = os.path.join(args.data, f"out-{workers}")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        manifest = build_dataset(raw, out, workers=workers, seed=0, val_fraction=0.1)
        elapsed = time.perf_counter() - t0
        rows.append((workers, elapsed, manifest))
    print(f"\nmachine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}; {args.locations} raw locations at 264 px, "
          "synthetic (make_raw)\n")
    print("| workers | wall s | locations/s | vs 1 worker |")
    print("| --- | ---: | ---: | ---: |")
    one = next(e for w, e, _ in rows if w == 1)
    for workers, elapsed, manifest in rows:
        label = "0 (in process)" if workers == 0 else str(workers)
        n = manifest["summary"]["locations"]
        print(f"| {label} | {elapsed:.1f} | {n / elapsed:.2f} | {one / elapsed:.2f} |")
    timings = rows[0][2]["timings_s"]
    total = sum(timings.values())
    print("\nwhere the time goes (in-process build, seconds summed over tasks):\n")
    print("| step | s | share |")
    print("| --- | ---: | ---: |")
    for step, sec in sorted(timings.items(), key=lambda kv: -kv[1]):
        print(f"| {step} | {sec:.2f} | {sec / total:.0%} |")


if __name__ == "__main__":
    main()
