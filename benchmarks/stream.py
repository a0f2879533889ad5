"""Training straight from a URL with 50 ms before every response, against the same shards on local disk.

    python benchmarks/stream.py [--shards 4] [--split val] [--workers 2] [--latency 0.05] [--rounds 2]
                                [--size 264] [--rate BYTES_PER_S] [--timestamps 0]

A virtual static host (``ssl4eo_zarr.virtualhost``, its own process: published SSL4EO-S12 shard names and
counts, every member a full-size S2L2A member, ``--latency`` seconds before each response, no rate cap) serves
the first ``--shards`` shards of ``--split`` (val has 5; train for more, e.g. 8 for 4 per worker with 2
workers); the same bytes are downloaded once into a temporary folder. Each round runs
one epoch of ``ChunkDataset(files, modalities=["S2L2A"], batch_size=64)`` in a ``DataLoader`` with ``--workers``
workers over the local copy and over the URLs, the order alternating between rounds (this machine's speed
drifts). Warm-up (construction to the first batch) and steady state (locations per second after the first
batch) are reported apart, with the remote/local ratio of the steady state. The host shares this machine's
cores: its CPU (sending every byte) is charged to the remote configuration.

``--rate`` caps each response (bytes/s); ``--timestamps 0`` (or ``random``) delivers one season, and adds the
configuration ``url_whole`` (``skip_unused=False``) beside ``url`` (the default, which reads members by parts
where the measured link makes that faster). ``--spread N`` adds the URL configurations again with each worker
reading N shards at once (``ChunkDataset.spread``; the default is ``loader.dataset.SPREAD``), interleaved.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import machine  # noqa: E402


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the DataLoader's workers once the epoch ends; the
    virtual host runs on until the end, so its CPU is not counted)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def epoch(files: list[str], workers: int, seed: int, spread: int | None = None, **kw) -> dict[str, float]:
    """One epoch: seconds to construct, to the first batch, locations per second after it, and the loader's
    CPU ms per location (consumer and workers, not the host). ``spread``: shards a worker reads at once."""
    from torch.utils.data import DataLoader

    import ssl4eo_zarr as sz

    c0 = _cpu()
    t0 = time.perf_counter()
    ds = sz.ChunkDataset(files, modalities=["S2L2A"], batch_size=64, seed=seed, **kw)
    if spread:
        ds.spread = spread
    built = time.perf_counter() - t0
    first = None
    n_after = 0
    for batch in DataLoader(ds, batch_size=None, num_workers=workers):
        if first is None:
            first = time.perf_counter()
        else:
            n_after += batch["S2L2A"].shape[0]
    end = time.perf_counter()
    assert first is not None
    return {"construct_s": built, "first_batch_s": first - t0, "steady_loc_s": n_after / (end - first),
            "epoch_s": end - t0, "cpu_ms_loc": (_cpu() - c0) * 1e3 / len(ds.sets) / 512}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--split", default="val", choices=["val", "train"],
                    help="val holds 5 shards; train, for 4 shards per worker with several workers")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", type=int, default=264)
    ap.add_argument("--rate", type=float, default=None)
    ap.add_argument("--timestamps", default="all")
    ap.add_argument("--spread", type=int, default=None, help="also the URL configurations at this spread")
    args = ap.parse_args()
    ts = int(args.timestamps) if args.timestamps.isdigit() else args.timestamps
    kw = {"timestamps": ts}

    from ssl4eo_zarr import schema
    from ssl4eo_zarr.virtualhost import VirtualHost, sample_members

    print(machine())
    members = {"ssl4eo-s12": sample_members(args.size, ("S2L2A",))}
    names = [schema.shard_name(k) for k in range(1, args.shards + 1)]
    tmp = tempfile.mkdtemp(prefix="ssl4eo-stream-")
    os.environ["SSL4EO_ZARR_CACHE"] = os.path.join(tmp, "cache")  # kept shard indexes only: no byte cache is set
    try:
        with VirtualHost(members, latency=args.latency, rate=args.rate) as host:
            urls = [f"{host.root()}/{args.split}/S2L2A/{n}" for n in names]
            local = [os.path.join(tmp, args.split, "S2L2A", name) for name in names]

            def download(url: str, path: str) -> None:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with urllib.request.urlopen(url) as r, open(path, "wb") as f:
                    shutil.copyfileobj(r, f, 1 << 22)

            with ThreadPoolExecutor(len(urls)) as pool:  # each response is rate-capped: all at once
                list(pool.map(download, urls, local))
            gb = sum(os.path.getsize(p) for p in local) / 1e9
            rate = f", {args.rate / 1e6:.0f} MB/s per response" if args.rate else ""
            print(f"{args.shards} shards, {gb:.2f} GB, {args.workers} workers, latency {args.latency * 1e3:.0f} ms"
                  f"{rate}, timestamps={ts}")
            epoch(urls, args.workers, 0, **kw)  # the shard indexes are walked once and kept, as a second epoch finds them
            epoch(local, args.workers, 0, **kw)
            order = [("local", local, kw), ("url", urls, kw)]
            if ts != "all":
                order.append(("url_whole", urls, {**kw, "skip_unused": False}))
            if args.spread:
                order += [(f"{name}@{args.spread}", files, {**how, "spread": args.spread})
                          for name, files, how in order if name != "local"]
            results: dict[str, list[dict[str, float]]] = {name: [] for name, _f, _k in order}
            for r in range(args.rounds):
                for name, files, how in (order if r % 2 == 0 else order[::-1]):
                    res = epoch(files, args.workers, r + 1, **how)
                    results[name].append(res)
                    print(f"round {r} {name:11s} " + " ".join(f"{k} {v:.2f}" for k, v in res.items()), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = {k: max(v, key=lambda x: x["steady_loc_s"]) for k, v in results.items()}
    print("\nconfiguration    first batch s  steady locations/s  vs local  loader CPU ms/location  vs local")
    for k, v in best.items():
        print(f"{k:15s}  {v['first_batch_s']:13.2f}  {v['steady_loc_s']:18.1f}  "
              f"{v['steady_loc_s'] / best['local']['steady_loc_s']:8.2f}  {v['cpu_ms_loc']:22.2f}  "
              f"{v['cpu_ms_loc'] / best['local']['cpu_ms_loc']:8.2f}")


if __name__ == "__main__":
    main()
