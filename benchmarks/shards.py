"""Streaming WebDataset shards: the published pipeline against ChunkDataset, all configurations in one run.

    python benchmarks/shards.py [--files 6] [--workers 2] [--data bench-data] [--repeat 2]

Full-size data (S2L1C + S2L2A + S1GRD, 64 locations x 4 timestamps x 264 px per chunk file), converted to
shards of 64 locations (one shard per chunk file, so workers get equal shares in every configuration):
  (a) the published pipeline: webdataset + fsspec's zip filesystem + zarr.open_consolidated per member, modalities
      merged by key, default_collate into batches of 64 (run under zarr-python 2.18, as it requires);
  (b) ChunkDataset over the shards (batch 64, shuffle buffer 64);
  (c) ChunkDataset over the same data as chunk files (whole chunks of 64);
  (d) (b) over a loopback static HTTP server (files only, Range requests).
Every configuration runs 3 epochs with persistent workers; epochs 2-3 are timed (steady state of a long epoch).
Reported: patch-timestamps/s, ratios (targets: b >= 3 a, b >= 0.8 c, d >= 0.8 b) and peak RSS per worker against
one decoded batch and the shuffle buffer.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import MODS, _consume, ensure_data, machine  # noqa: E402


def ensure_shards(chunks: str, out: str) -> None:
    from ssl4eo_zarr import convert

    if all(os.path.isdir(os.path.join(out, "train", m)) for m in MODS):
        return
    t0 = time.perf_counter()
    convert.chunks_to_shards(chunks, out, split="train", modalities=MODS, per_shard=64)
    print(f"converted to shards in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def _published(shards: str, n_shards: int):
    """The published multi-modal pipeline, step for step (webdataset building blocks, zarr <= 2.18)."""
    import fsspec
    import webdataset as wds
    import zarr
    from torch.utils.data._utils.collate import default_collate

    def decode(key, value):
        if key.endswith(".zarr.zip"):
            mapper = fsspec.filesystem("zip", fo=io.BytesIO(value), block_size=None).get_mapper("")
            return zarr.open_consolidated(mapper, mode="r")["bands"][...]
        return value

    def merged(src_iter):
        for src in src_iter:
            tars = [wds.tarfile_samples([{"url": src["url"].replace("MOD", m)}]) for m in MODS]
            for samples in zip(*tars):
                out = {"__key__": samples[0]["__key__"]}
                for m, sample in zip(MODS, samples):
                    if sample["__key__"] != out["__key__"]:
                        raise ValueError("divergence")
                    out.update({f"{m}.{k}": v for k, v in sample.items() if not k.startswith("__")})
                yield out

    def strip(sample):
        return {k.split(".", 1)[0]: v for k, v in sample.items()}

    urls = [os.path.join(shards, "train", "MOD", f"ssl4eos12_shard_{i:06d}.tar") for i in range(1, n_shards + 1)]
    return wds.DataPipeline(wds.SimpleShardList(urls), wds.split_by_worker, merged, wds.decode(decode), wds.map(strip),
                            wds.batched(64, collation_fn=default_collate, partial=True))


EPOCHS = 3


def _epochs(loader, set_epoch=None) -> dict:
    """Steady state: persistent workers over EPOCHS epochs, all but the first timed (a 6-shard epoch gives
    each worker only 3 batches, too few for reused buffers to come round)."""
    runs = []
    for epoch in range(EPOCHS):
        if set_epoch is not None:
            set_epoch(epoch)
        runs.append(_consume(loader, lambda b: b["S2L1C"].shape[0] * b["S2L1C"].shape[1]))
    timed = runs[1:]
    return {"samples": sum(r["samples"] for r in timed), "seconds": sum(r["seconds"] for r in timed),
            "first_batch_s": runs[0]["first_batch_s"], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def bench_published(shards: str, n_shards: int, workers: int) -> dict:
    from torch.utils.data import DataLoader

    loader = DataLoader(_published(shards, n_shards), batch_size=None, num_workers=workers,
                        multiprocessing_context="fork", persistent_workers=True)
    return {"name": "(a) published: webdataset + fsspec zip + zarr per member", **_epochs(loader)}


def bench_loader(root: str, workers: int, name: str, **kwargs) -> dict:
    from torch.utils.data import DataLoader

    from ssl4eo_zarr import ChunkDataset

    ds = ChunkDataset(root, split="train", modalities=MODS, seed=0, **kwargs)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context="fork",
                        persistent_workers=True)
    return {"name": name, **_epochs(loader, ds.set_epoch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", default="bench-data")
    parser.add_argument("--shards", default="bench-shards")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--configs", default="abcd", help="which configurations to run (letters), e.g. bd")
    args = parser.parse_args()

    import torch
    import zarr

    from ssl4eo_zarr.testing import ServerProcess

    ensure_data(args.data, args.files)
    ensure_shards(args.data, args.shards)
    n_shards = len(os.listdir(os.path.join(args.shards, "train", MODS[0])))
    w = args.workers
    with ServerProcess(args.shards) as server:  # its own process, like a real host
        every = {
            "a": lambda: bench_published(args.shards, n_shards, w),
            "b": lambda: bench_loader(args.shards, w, "(b) ChunkDataset over shards", batch_size=64),
            "c": lambda: bench_loader(args.data, w, "(c) ChunkDataset over chunk files"),
            "d": lambda: bench_loader(server.url, w, "(d) ChunkDataset over shards, loopback HTTP", batch_size=64),
        }
        configs = [every[k] for k in args.configs]
        rounds = [[config() for config in configs] for _ in range(max(args.repeat, 1))]
    runs = [min((r[i] for r in rounds), key=lambda x: x["seconds"]) for i in range(len(configs))]
    for r in runs:
        r["per_s"] = r["samples"] / r["seconds"]
    got = dict(zip(args.configs, runs))
    ref = runs[0]
    print(f"\nmachine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d')}; python {platform.python_version()}, torch {torch.__version__}, "
          f"zarr {zarr.__version__}; {n_shards} shards x 64 locations x 4 timestamps, {w} worker processes\n")
    print("| configuration | patch-timestamps/s | vs first row | first batch (s) | peak RSS/worker (MB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(f"| {r['name']} | {r['per_s']:.0f} | {r['per_s'] / ref['per_s']:.2f} | {r['first_batch_s']:.2f} | "
              f"{r['peak_rss_mb']:.0f} |")
    for num, den, target in (("b", "a", 3), ("b", "c", 0.8), ("d", "b", 0.8)):
        if num in got and den in got:
            print(f"({num})/({den}) {got[num]['per_s'] / got[den]['per_s']:.2f} (target >= {target})")
    if "b" in got:
        b = got["b"]
        batch_mb = 64 * 4 * (13 + 12 + 2) * 264 * 264 * 2 / 2**20
        shard_bytes = sum(os.path.getsize(os.path.join(args.shards, "train", m, n))
                          for m in MODS for n in os.listdir(os.path.join(args.shards, "train", m)))
        buffer_mb = shard_bytes / (n_shards * 64) * 64 / 2**20  # 64 locations held compressed
        print(f"one decoded batch {batch_mb:.0f} MB, shuffle buffer {buffer_mb:.0f} MB: peak RSS per worker of (b) "
              f"{b['peak_rss_mb']:.0f} MB = {b['peak_rss_mb'] / (2 * batch_mb + buffer_mb):.2f} x (2 batches + buffer; "
              "target <= 1)")

if __name__ == "__main__":
    main()
