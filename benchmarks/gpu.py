"""Where to normalise: float32 standardisation in the DataLoader workers vs native dtypes to the GPU (pinned)
and standardisation there. Needs a CUDA GPU.

    python benchmarks/gpu.py [--files 4] [--workers 2 6] [--data bench-data] [--repeat 2]

Configurations (S2L1C + S2L2A + S1GRD, full-size chunk files of benchmarks/loader.py, generated if missing),
each delivering float32 standardised tensors on the GPU:
  A. ``ChunkDataset(normalize=True)`` (float32 in the workers), ``pin_memory=True``, copy to the GPU;
  B. native dtypes (int16/float16), ``pin_memory=True``, ``normalize(batch, device="cuda")`` on the GPU;
  C. as B without ``pin_memory`` (pageable copies);
  D. native dtypes on the CPU only, nothing sent to the GPU (the loader's own ceiling);
  E. as B, but the consumer maps each arrived batch afresh (``pool.KEEP_MAPPED = False``, the behaviour
     before arenas were kept mapped);
  F. native dtypes, no ``pin_memory``, ``DeviceFeeder("cuda", normalize=True)``: copies straight from the
     workers' arenas, page-locked in place.
Each runs 3 epochs with persistent workers, epochs 2-3 timed, configurations interleaved over rounds (best
round each). Also reported: the consumer process's CPU seconds per batch and the host-to-device copy of one
whole-chunk batch, pinned or pageable, native or float32 (CUDA events).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import MODS, ensure_data, machine  # noqa: E402

from ssl4eo_zarr import ChunkDataset  # noqa: E402
from ssl4eo_zarr.loader import DeviceFeeder, normalize  # noqa: E402

EPOCHS = 3
DEVICE = "cuda"  # --device cpu: a dry run of the script without a GPU


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(root: str, workers: int, config: str) -> dict:
    from torch.utils.data import DataLoader

    from ssl4eo_zarr.loader import pool

    pool.KEEP_MAPPED = config != "E"

    ds = ChunkDataset(root, split="train", modalities=MODS, seed=0, normalize=config == "A")
    loader = DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context="fork",
                        persistent_workers=True, pin_memory=config in ("A", "B", "E") and DEVICE == "cuda")
    feed = DeviceFeeder(DEVICE, normalize=True)
    timed_n = timed_s = timed_cpu = 0.0
    batches = 0
    for epoch in range(EPOCHS):
        ds.set_epoch(epoch)
        t0, c0 = time.perf_counter(), _cpu()
        n = 0
        for batch in loader:
            x = batch["S2L1C"]
            n += x.shape[0] * (x.shape[1] if x.ndim == 5 else 1)
            if config == "A":
                out = {m: batch[m].to(DEVICE, non_blocking=True) for m in MODS}
            elif config in ("B", "C", "E"):
                out = normalize({m: batch[m] for m in MODS}, device=DEVICE)
            elif config == "F":
                out = feed(batch)
            else:
                out = batch
            del batch, out
            if epoch:
                batches += 1
        feed.synchronize() if DEVICE == "cuda" else None
        _sync()
        if epoch:
            timed_n += n
            timed_s += time.perf_counter() - t0
            timed_cpu += _cpu() - c0
    del loader
    return {"rate": timed_n / timed_s, "cpu_per_batch": timed_cpu / max(batches, 1)}


def copy_times(root: str) -> dict[str, float]:
    """Milliseconds to copy one whole-chunk batch (64 locations x 4 timestamps, 3 modalities) to the GPU."""
    ds = ChunkDataset(root, split="train", modalities=MODS, shuffle=False, buffer_slots=0)
    batch = next(iter(ds))
    native = {m: batch[m].contiguous() for m in MODS}
    f32 = {m: v.float() for m, v in native.items()}
    out = {}
    for label, src in (("native", native), ("float32", f32)):
        for pinned in (True, False):
            host = {m: (v.pin_memory() if pinned else v) for m, v in src.items()}
            best = float("inf")
            for _ in range(5):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                dev = {m: v.to("cuda", non_blocking=True) for m, v in host.items()}
                end.record()
                torch.cuda.synchronize()
                best = min(best, start.elapsed_time(end))
                del dev
            nbytes = sum(v.numel() * v.element_size() for v in host.values())
            out[f"{label}, {'pinned' if pinned else 'pageable'}"] = (best, nbytes)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    dev = {m: v.to("cuda") for m, v in native.items()}
    torch.cuda.synchronize()
    start.record()
    for _ in range(10):
        normalize(dev)
    end.record()
    torch.cuda.synchronize()
    out["GPU normalize of the batch (on the device)"] = (start.elapsed_time(end) / 10, 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--data", default="bench-data")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU (--device cpu for a dry run)")
    ensure_data(args.data, args.files)
    names = {"A": "A: float32 normalised in the workers, pinned, copied",
             "B": "B: native dtypes, pinned, normalised on the GPU",
             "C": "C: native dtypes, pageable, normalised on the GPU",
             "D": "D: native dtypes, CPU only (no GPU work)",
             "E": "E: as B, each batch mapped afresh in the consumer",
             "F": "F: native dtypes, DeviceFeeder (arenas page-locked in place), normalised on the GPU"}
    best: dict[tuple[int, str], dict] = {}
    for rnd in range(args.repeat):
        for workers in args.workers:
            for config in names:
                r = run(args.data, workers, config)
                key = (workers, config)
                if key not in best or r["rate"] > best[key]["rate"]:
                    best[key] = r
                print(f"round {rnd}, {workers} workers, {config}: {r['rate']:.0f}/s, "
                      f"consumer {r['cpu_per_batch']:.3f} CPU s/batch", flush=True)
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "none (dry run)"
    print(f"\nmachine: {machine()}; GPU: {gpu}, torch {torch.__version__}\n"
          f"date: {time.strftime('%Y-%m-%d')}; {args.files} files, epochs 2-{EPOCHS} timed\n")
    print("| workers | configuration | patch-timestamps/s | vs A | consumer CPU s per batch |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for workers in args.workers:
        base = best[workers, "A"]["rate"]
        for config, label in names.items():
            r = best[workers, config]
            print(f"| {workers} | {label} | {r['rate']:.0f} | {r['rate'] / base:.2f} | {r['cpu_per_batch']:.3f} |")
    if DEVICE != "cuda":
        return
    print("\n| one whole-chunk batch to the GPU | ms | GB/s |")
    print("| --- | ---: | ---: |")
    for label, (ms, nbytes) in copy_times(args.data).items():
        print(f"| {label} | {ms:.1f} | " + (f"{nbytes / ms / 1e6:.1f} |" if nbytes else "- |"))


if __name__ == "__main__":
    main()
