"""ChunkDataset over a loopback static HTTP server vs local files, with and without fetching ahead, and bytes
moved vs chunk bytes.

    python benchmarks/remote.py [--files 6] [--workers 2] [--data bench-data] [--repeat 2]
                                [--loader-cpus 0-1 --server-cpus 2-3]

Uses the full-size files of benchmarks/loader.py (generated there if missing), served by
``ssl4eo_zarr.testing.ServerProcess`` (Range requests answered with sendfile, in its own process, as a real
host runs elsewhere) on 127.0.0.1. Each configuration runs 3 epochs with persistent workers, epochs 2-3
timed (steady state); configurations interleaved over rounds, best round each.

On a machine with cores to spare, ``--loader-cpus``/``--server-cpus`` pin the loader (consumer and workers)
and the server to separate cores: a host elsewhere, with the loader's cores as scarce as on a small node.

Besides speed, the table gives the loading side's CPU per patch-timestamp (the consuming process and its
workers, not the server): on a machine whose cores the loopback server shares, speed alone charges the host's
work to the reader, and that CPU ratio is what remains when the host runs elsewhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import MODS, bench_chunkdataset, cpu_seconds, ensure_data, machine  # noqa: E402

from ssl4eo_zarr.testing import ServerProcess  # noqa: E402

EPOCHS = 3


def cpu_list(text: str) -> set[int]:
    """``"0-1,4"`` -> ``{0, 1, 4}``."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` onto ``cpus`` (threads and processes it starts later inherit that)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


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
    parser.add_argument("--loader-cpus", default=None, help="CPUs of the consumer and its workers, e.g. 0-1")
    parser.add_argument("--server-cpus", default=None, help="CPUs of the HTTP server, e.g. 2-3")
    args = parser.parse_args()
    if args.loader_cpus:
        pin(os.getpid(), cpu_list(args.loader_cpus))
    names = ensure_data(args.data, args.files)
    modes = (("all 4 timestamps", {}, [0, 1, 2, 3]), ("one timestamp", {"timestamps": 1}, [1]))
    configs = (("local", False, {}), ("HTTP, on demand (prefetch=0)", True, {"prefetch": 0}),
               ("HTTP, fetching ahead (prefetch=1, default)", True, {}))
    best: dict[tuple[str, str], float] = {}
    traffic: dict[tuple[str, str], tuple[float, float]] = {}
    server_cpu: dict[tuple[str, str], float] = {}
    client_cpu: dict[tuple[str, str], float] = {}  # CPU ms per patch-timestamp of the consumer and its workers
    with ServerProcess(args.data) as server:
        if args.server_cpus:
            pin(server.pid, cpu_list(args.server_cpus))
        for rnd in range(args.repeat):
            for mode, mode_kwargs, _ts in modes:
                for label, remote, kwargs in configs:
                    server.reset_counts()
                    cpu0 = cpu_seconds(server.pid)
                    out = bench_chunkdataset(server.url if remote else args.data, args.workers, label,
                                             epochs=EPOCHS, **mode_kwargs, **kwargs)
                    rate = out["samples"] / out["seconds"]
                    moved, requests = server.counts()
                    if rate > best.get((mode, label), 0.0):
                        client_cpu[mode, label] = 1000 * out["client_cpu_s"] / out["samples"]
                    best[mode, label] = max(best.get((mode, label), 0.0), rate)
                    if remote:
                        traffic[mode, label] = (moved / EPOCHS, requests / EPOCHS)
                        server_cpu[mode, label] = (cpu_seconds(server.pid) - cpu0) / EPOCHS
                    print(f"round {rnd}: {mode:17s} {label:45s} {rate:7.1f}/s", flush=True)
    pinned = f"; loader on CPUs {args.loader_cpus}, server on {args.server_cpus}" if args.loader_cpus else ""
    print(f"\nmachine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}; {args.files} files, {args.workers} workers, "
          f"epochs 2-{EPOCHS} timed{pinned}\n")
    print("| timestamps | configuration | patch-timestamps/s | vs local | loader CPU ms per patch-timestamp "
          "| vs local | MB moved per epoch | moved / chunk bytes | requests per epoch | server CPU s per epoch |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, _kw, ts in modes:
        needed = chunk_bytes(args.data, names, ts)
        local, local_cpu = best[mode, "local"], client_cpu[mode, "local"]
        for label, remote, _kwargs in configs:
            rate, cpu = best[mode, label], client_cpu[mode, label]
            moved, reqs = traffic.get((mode, label), (float("nan"), float("nan")))
            print(f"| {mode} | {label} | {rate:.0f} | {rate / local:.2f} | {cpu:.2f} | {cpu / local_cpu:.2f} | "
                  + (f"{moved / 2**20:.1f} | {moved / needed:.4f} | {reqs:.0f} | {server_cpu[mode, label]:.1f} |"
                     if remote else "- | - | - | - |"))

if __name__ == "__main__":
    main()
