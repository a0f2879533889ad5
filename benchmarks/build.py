"""Build throughput (locations/s) with 1 and 2 dask workers on synthetic raw data, where the time goes, and
what a resume costs.

    python benchmarks/build.py [--locations 24] [--data bench-raw] [--resume-only]

Resume: (1) rerunning a finished build; (2) an interrupted build (all locations staged, one output file
missing), both against the fresh in-process build; bytes read are the process's ``rchar`` (every byte read).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import machine  # noqa: E402

from ssl4eo_zarr.builder import build_dataset  # noqa: E402
from ssl4eo_zarr.synthetic import make_raw  # noqa: E402


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def resume(raw: str, folder: str) -> None:
    """Fresh build vs the two kinds of resume, same raw input, in this process."""
    out = os.path.join(folder, "out-resume")
    shutil.rmtree(out, ignore_errors=True)
    rows = []
    for label, prepare in (("fresh build", None), ("rerun of the finished build", "none"),
                           ("interrupted: staged, one file missing", "drop-one")):
        if prepare == "drop-one":
            import json

            manifest_path = os.path.join(out, "manifest.json")
            manifest = json.load(open(manifest_path))
            key = sorted(manifest["files"])[0]
            split, name = key.split("/")
            del manifest["files"][key]
            json.dump(manifest, open(manifest_path, "w"))
            for mod in ("S1GRD", "S2L1C", "S2L2A", "S2RGB"):
                os.remove(os.path.join(out, split, mod, name))
        before, t0 = _rchar(), time.perf_counter()
        build_dataset(raw, out, workers=0, seed=0, val_fraction=0.1, keep_staging=True)
        rows.append((label, time.perf_counter() - t0, _rchar() - before))
    fresh = rows[0][1]
    print("\n| build | wall s | vs fresh | bytes read (MB) |")
    print("| --- | ---: | ---: | ---: |")
    for label, elapsed, read in rows:
        print(f"| {label} | {elapsed:.2f} | {elapsed / fresh:.3f} | {read / 1e6:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--locations", type=int, default=24)
    parser.add_argument("--data", default="bench-raw")
    parser.add_argument("--resume-only", action="store_true")
    args = parser.parse_args()
    raw = os.path.join(args.data, "raw")
    if not os.path.isdir(raw):
        make_raw(raw, args.locations, size=264, seed=0)
    if args.resume_only:
        print(f"\nmachine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}; {args.locations} raw locations at 264 px")
        resume(raw, args.data)
        return
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
    resume(raw, args.data)


if __name__ == "__main__":
    main()
