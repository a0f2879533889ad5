"""Opening a split of 3,812 chunk files (the published train split's size) lazily, vs opening each file with
xarray and concatenating (the naive way), in one run.

    python benchmarks/open_split.py [--files 3812] [--naive-files 200] [--data bench-split] [--rounds 3]

Interleaved over ``--rounds``: the first open without the split index, the first open building it (a fresh
cache folder), the reopen through it, and the first open over a loopback static HTTP server (its own
process; remote files are not indexed).

The files are small (4 locations x 16 px) because opening must not depend on their size: it reads each file's
zip directory, ``.zmetadata`` and ``sample`` ids only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import xarray as xr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import cpu_seconds, machine  # noqa: E402

import ssl4eo_zarr  # noqa: E402
from ssl4eo_zarr import schema, synthetic  # noqa: E402
from ssl4eo_zarr.storage import zarr_open_kwargs, zarr_store  # noqa: E402


def make_split(root: str, n_files: int) -> None:
    listing = os.path.join(root, schema.split_list_name("train"))
    if os.path.exists(listing) and sum(1 for _ in open(listing)) == n_files:
        return
    chunk = synthetic.make_chunk(synthetic.sample_locations(4, seed=0), size=16, seed=0)
    template = os.path.join(root, "template")
    for mod, ds in chunk.items():
        ssl4eo_zarr.write_chunk(ds, os.path.join(template, f"{mod}.zarr.zip"), size=16)
    names = [schema.chunk_file_name("train", i + 1) for i in range(n_files)]
    for mod in schema.CHUNK_MODALITIES:
        os.makedirs(os.path.join(root, "train", mod), exist_ok=True)
        for name in names:  # identical content under every name: opening cost does not depend on it
            dst = os.path.join(root, "train", mod, name)
            if not os.path.exists(dst):
                shutil.copyfile(os.path.join(template, f"{mod}.zarr.zip"), dst)
    os.makedirs(os.path.dirname(listing), exist_ok=True)
    with open(listing, "w") as f:
        f.write("".join(n + "\n" for n in names))


def naive(root: str, n_files: int) -> float:
    t0 = time.perf_counter()
    parts = []
    for i in range(n_files):
        per_mod = [xr.open_zarr(zarr_store(os.path.join(root, "train", m, schema.chunk_file_name("train", i + 1))),
                                **zarr_open_kwargs())["bands"].rename(m).rename(band=f"band_{m}")
                   for m in schema.CHUNK_MODALITIES]
        parts.append(xr.merge(per_mod, compat="override"))
    xr.concat(parts, dim="sample")
    return time.perf_counter() - t0


def interleaved_opens(root: str, n_files: int, rounds: int) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Best seconds of each way to open the split, the ways interleaved over ``rounds``; and for that best
    round, the CPU seconds of this process (the opener, all its threads) and of the HTTP server."""
    import tempfile

    from ssl4eo_zarr.splitindex import wait_for_saves
    from ssl4eo_zarr.testing import ServerProcess

    best: dict[str, float] = {}
    cpu: dict[str, tuple[float, float]] = {}
    with ServerProcess(root) as server, tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            os.environ["SSL4EO_ZARR_CACHE"] = os.path.join(tmp, f"round{r}")
            runs = (("first open, no index (use_index=False)", root, {"use_index": False}),
                    ("first open, building the split index", root, {}),
                    ("reopen through the split index", root, {}),
                    ("first open over loopback HTTP (not indexed)", server.url, {}))
            for label, where, kwargs in runs:
                t0, c0, s0 = time.perf_counter(), time.process_time(), cpu_seconds(server.pid)
                ds = ssl4eo_zarr.open_dataset(where, split="train", **kwargs)
                seconds = time.perf_counter() - t0
                spent = (time.process_time() - c0, cpu_seconds(server.pid) - s0)
                assert ds.sizes["sample"] == 4 * n_files
                wait_for_saves()  # the index is written in the background: the reopen must find it
                if seconds < best.get(label, float("inf")):
                    best[label], cpu[label] = seconds, spent
                print(f"round {r}: {label}: {seconds:.2f} s", flush=True)
    return best, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=3812)
    parser.add_argument("--naive-files", type=int, default=200)
    parser.add_argument("--data", default="bench-split")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    make_split(args.data, args.files)
    opens, cpu = interleaved_opens(args.data, args.files, args.rounds)
    ours = opens["first open, building the split index"]
    t_naive = naive(args.data, args.naive_files)
    per_file_naive = t_naive / args.naive_files
    print(f"\nmachine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}; zarr {__import__('zarr').__version__}, "
          f"xarray {xr.__version__}\n")
    print("| method | files | seconds | per file (ms) | whole split (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| ssl4eo_zarr.open_dataset(root, split='train') | {args.files} | {ours:.1f} | "
          f"{1000 * ours / args.files:.2f} | {ours:.1f} |")
    print(f"| xr.open_zarr per file and modality + merge + concat | {args.naive_files} | {t_naive:.1f} | "
          f"{1000 * per_file_naive:.1f} | {per_file_naive * args.files:.0f} (extrapolated) |")
    print(f"\nspeed-up: {per_file_naive * args.files / ours:.0f}x")
    base = opens["first open, no index (use_index=False)"]
    base_cpu = cpu["first open, no index (use_index=False)"][0]
    print("\n| open (best of the rounds) | seconds | vs first open without index | opener CPU s | vs first open "
          "without index | server CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, seconds in opens.items():
        mine, server = cpu[label]
        print(f"| {label} | {seconds:.2f} | {seconds / base:.2f} | {mine:.1f} | {mine / base_cpu:.2f} | "
              + (f"{server:.1f} |" if "HTTP" in label else "- |"))


if __name__ == "__main__":
    main()
