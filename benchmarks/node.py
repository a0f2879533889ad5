"""A GPU node at full speed: one table of the node's decode ceiling, the raw loop, ChunkDataset (warm-up, steady
state, epoch turns, CPU per patch-timestamp) and the copies to the GPU, for several worker counts.

    python benchmarks/node.py [--workers 2 8 14] [--per-worker 4] [--device cuda|cpu] [--size 264]
                              [--data bench-data/node] [--epochs 4] [--read-ahead auto|on|off] [--pace 0.8]
                              [--blosc-threads N]

Data: one full-size chunk file set (S2L1C + S2L2A + S1GRD, 64 locations x 4 timestamps x 264 px) generated
once and copied to ``per-worker x max(workers)`` files (so every worker gets several), then ``sync`` so that no
writeback runs while timing. ``--device cpu`` is a dry run of the whole script on a machine without a GPU (the
GPU rows then copy to the CPU). ``--size 64`` makes a quick dry run.

Rows, for each N in ``--workers``:
  ceiling      N processes decoding every stored chunk of their files with numcodecs into reused buffers,
               nothing else (zip members read with this library's CRC-checked reader);
  raw          N processes: zipfile + numcodecs into new arrays (benchmarks/loader.py's raw loop);
  chunkdataset ChunkDataset, persistent workers, ``epochs`` epochs: epoch 1 (warm-up: buffers being made),
               epochs 2.. (steady), the first batch of epochs 3.. after iteration starts (the epoch turn; the
               read-ahead of the next epoch starts with a worker's second epoch), also with a consumer that
               takes batches at ``--pace`` of the steady rate (a training step the loader keeps up with), and
               the loader's CPU-ms per patch-timestamp (consumer + workers) against the ceiling's;
  gpu-*        the batch on the device as float32 standardised: ``pin_memory=True`` + ``normalize`` there,
               pageable + ``normalize``, and ``DeviceFeeder(normalize=True)`` (arenas page-locked in place).
Each row is a patch-timestamp rate (S2L1C patches x timestamps per second; every patch-timestamp brings its
S2L2A and S1GRD too) and its ratio to the ceiling.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import MODS, _consume, _raw_worker, machine  # noqa: E402


def ensure_files(folder: str, n_files: int, size: int) -> list[str]:
    """``n_files`` copies of one generated chunk file set under ``folder/train``, the split list naming them."""
    from ssl4eo_zarr import schema
    from ssl4eo_zarr.synthetic import make_dataset

    names = [schema.chunk_file_name("train", i + 1) for i in range(n_files)]
    first = names[0]
    if not all(os.path.exists(os.path.join(folder, "train", m, first)) for m in MODS):
        make_dataset(folder, n_files=1, samples=64, size=size, seed=0, split="train", modalities=MODS)
    for m in MODS:
        src = os.path.join(folder, "train", m, first)
        for n in names[1:]:
            dst = os.path.join(folder, "train", m, n)
            if not os.path.exists(dst) or os.path.getsize(dst) != os.path.getsize(src):
                shutil.copyfile(src, dst)
    with open(os.path.join(folder, schema.split_list_name("train")), "w") as f:
        f.write("".join(n + "\n" for n in names))
    os.sync()  # no writeback while timing
    return names


def _decode_worker(paths: list[str]) -> tuple[int, float]:
    """Decode every stored chunk of ``bands`` in ``paths`` into reused buffers; (patch-timestamps, CPU s)."""
    import numcodecs

    from ssl4eo_zarr.storage import ZipArchive, thread_scratch
    from ssl4eo_zarr.zarrv2 import read_group

    scratch = thread_scratch()
    out: dict[tuple, np.ndarray] = {}
    n = 0
    t0 = time.process_time()
    for path in paths:
        archive = ZipArchive(path)
        meta = read_group(archive).arrays["bands"]
        codec = numcodecs.get_codec(meta.compressor)
        dst = out.setdefault((meta.chunks, str(meta.dtype)), np.empty(meta.chunks, dtype=meta.dtype))
        for t in range(meta.shape[1]):
            codec.decode(archive.read_into(meta.chunk_key((0, t, 0, 0, 0)), scratch), out=dst)
        archive.close()
        if path.split(os.sep)[-2] == MODS[0]:
            n += meta.shape[0] * meta.shape[1]
    return n, time.process_time() - t0


def _spread(root: str, names: list[str], workers: int) -> list[list[str]]:
    return [[os.path.join(root, "train", m, n) for n in names[w::workers] for m in MODS] for w in range(workers)]


def _blosc_threads() -> None:
    """Worker start: blosc's own threads per process as ``--blosc-threads`` asks. numcodecs' default gives blosc
    threads only in the main thread of the main process (``numcodecs.blosc._get_use_threads``): DataLoader workers
    and pool processes decode single-threaded unless told otherwise (``use_threads``)."""
    n = int(os.environ.get("NODE_BLOSC_THREADS", "0"))
    if n:
        import numcodecs.blosc

        numcodecs.blosc.set_nthreads(n)
        numcodecs.blosc.use_threads = n > 1


def ceiling(root: str, names: list[str], workers: int) -> dict:
    with mp.get_context("fork").Pool(workers, initializer=_blosc_threads) as pool:
        pool.map(_decode_worker, _spread(root, names[:workers], workers))  # page cache and imports warm
        t0 = time.perf_counter()
        results = pool.map(_decode_worker, _spread(root, names, workers))
        seconds = time.perf_counter() - t0
    n = sum(r[0] for r in results)
    return {"rate": n / seconds, "cpu_ms": 1000 * sum(r[1] for r in results) / n}


def raw(root: str, names: list[str], workers: int) -> dict:
    with mp.get_context("fork").Pool(workers, initializer=_blosc_threads) as pool:
        t0 = time.perf_counter()
        results = pool.map(_raw_worker, _spread(root, names, workers))
        seconds = time.perf_counter() - t0
    return {"rate": sum(r[0] for r in results) / seconds}


def _count(batch) -> int:
    x = batch["S2L1C"]
    return x.shape[0] * (x.shape[1] if x.ndim == 5 else 1)


def chunkdataset(root: str, workers: int, epochs: int, device: str | None = None, mode: str = "cpu",
                 read_ahead: bool | None = None, pace: float = 0.0) -> dict:
    """Persistent workers over ``epochs`` epochs; per epoch: rate, first batch after iteration starts, the
    loading side's CPU (consumer + workers). ``mode``: ``cpu`` (native dtypes, nothing moved), ``pinned``,
    ``pageable`` or ``feeder`` (the batch on ``device``, standardised there). ``read_ahead``:
    ``prepare_next_epoch`` (None: the default). ``pace``: the consumer's step per patch-timestamp in seconds
    (a training step that the loader has to keep up with; 0: the consumer takes batches as fast as they come)."""
    import torch
    from torch.utils.data import DataLoader

    from ssl4eo_zarr import ChunkDataset
    from ssl4eo_zarr.loader import DeviceFeeder, normalize
    from ssl4eo_zarr.loader.pool import kept_mappings

    ds = ChunkDataset(root, split="train", modalities=MODS, seed=0, prepare_next_epoch=read_ahead)
    pin = mode == "pinned" and device == "cuda"
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=True, pin_memory=pin,
                        multiprocessing_context="fork", worker_init_fn=lambda _: _blosc_threads())
    feed = DeviceFeeder(device, normalize=True) if mode == "feeder" else None
    def step(batch) -> None:
        out = feed(batch) if mode == "feeder" else normalize(batch, device=device) if mode != "cpu" else None
        if out is not None and device == "cuda":
            torch.cuda.synchronize()
        if pace:
            time.sleep(pace * _count(batch))

    rows = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        r = _consume(loader, _count, step)
        if feed is not None:
            feed.synchronize()
        rows.append({"rate": r["samples"] / r["seconds"], "first": r["first_batch_s"], "n": r["samples"],
                     "cpu_ms": 1000 * r["client_cpu_s"] / max(r["samples"], 1),
                     "arenas_gb": sum(kept_mappings().values()) / 2**30})
    del loader
    steady = rows[1:] or rows
    # The first turn comes before a worker process has served two epochs (read-ahead starts with the second).
    later = rows[2:] or steady
    return {"warmup": rows[0]["rate"], "rate": sum(r["n"] for r in steady) / sum(r["n"] / r["rate"] for r in steady),
            "turn": max(r["first"] for r in later), "turns": [r["first"] for r in rows[1:]],
            "first": rows[0]["first"], "rates": [r["rate"] for r in rows], "read_ahead": getattr(ds, "read_ahead", None),
            "arenas_gb": [r["arenas_gb"] / workers for r in rows],
            "cpu_ms": sum(r["cpu_ms"] * r["n"] for r in steady) / sum(r["n"] for r in steady)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 8, 14])
    parser.add_argument("--per-worker", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=264)
    parser.add_argument("--data", default="bench-data/node")
    parser.add_argument("--read-ahead", choices=("auto", "on", "off"), default="auto",
                        help="ChunkDataset(prepare_next_epoch=None/True/False): the next epoch's first batch")
    parser.add_argument("--blosc-threads", type=int, default=0,
                        help="blosc threads per process (workers and ceiling); 0: numcodecs' default, which "
                             "decodes single-threaded in worker processes")
    parser.add_argument("--pace", type=float, default=0.8,
                        help="the paced run's consumer takes batches at this fraction of the loader's steady rate")
    args = parser.parse_args()
    n_files = args.per_worker * max(args.workers)
    names = ensure_files(args.data, n_files, args.size)
    read_ahead = {"auto": None, "on": True, "off": False}[args.read_ahead]
    os.environ["NODE_BLOSC_THREADS"] = str(args.blosc_threads)
    print(f"# {machine()}; device {args.device}; {n_files} files ({args.per_worker} per worker at "
          f"{max(args.workers)} workers) of {args.size} px; {args.epochs} epochs, persistent workers; "
          f"read-ahead {args.read_ahead}; blosc threads {args.blosc_threads or 'default'}")
    print("\n| workers | ceiling /s | raw /s | ChunkDataset /s (x ceiling) | epoch 1 /s (x steady) | epoch turn s | "
          "epoch turn at pace s | first batch s | CPU ms / patch-ts (x ceiling's) | pinned + normalize /s | "
          "pageable + normalize /s | DeviceFeeder /s (x CPU-only) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.workers:
        use = names[: args.per_worker * n]
        top = ceiling(args.data, use, n)
        rw = raw(args.data, use, n)
        cd = chunkdataset(args.data, n, args.epochs, read_ahead=read_ahead)
        paced = chunkdataset(args.data, n, args.epochs, read_ahead=read_ahead, pace=1 / (args.pace * cd["rate"]))
        gpu = {mode: chunkdataset(args.data, n, 2, args.device, mode, read_ahead)["rate"]
               for mode in ("pinned", "pageable", "feeder")}
        print(f"| {n} | {top['rate']:.0f} | {rw['rate']:.0f} | {cd['rate']:.0f} ({cd['rate'] / top['rate']:.2f}) | "
              f"{cd['warmup']:.0f} ({cd['warmup'] / cd['rate']:.2f}) | {cd['turn']:.2f} | {paced['turn']:.2f} | "
              f"{cd['first']:.2f} | "
              f"{cd['cpu_ms']:.2f} ({cd['cpu_ms'] / top['cpu_ms']:.2f}) | {gpu['pinned']:.0f} | "
              f"{gpu['pageable']:.0f} | {gpu['feeder']:.0f} ({gpu['feeder'] / cd['rate']:.2f}) |", flush=True)
    print(f"\n(peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
