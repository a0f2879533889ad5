"""The published sizes over a slow link: first batch, subsets and fetch plans against a host that holds every
published shard of SSL4EO-S12 (477 x 512 train) and TerraMesh (889 x 10,240 train).

    python benchmarks/scale.py [--latency 0.05] [--rate 50e6] [--size 264] [--rounds 2] [--cap 150]
                               [--baseline PATH] [--published PYTHON]

The host is ``ssl4eo_zarr.virtualhost.VirtualHost`` (every published name and count; each tar made up on request
from one real member per modality at ``size`` px; ``latency`` s before each response, ``rate`` bytes/s per
response, no folder listing; the SSL4EO-S12 2026 metadata table at its root), in a process of its own. Each row
runs in a fresh Python process with this checkout's library or ``--baseline``'s (a folder holding another
commit's ``ssl4eo_zarr``, e.g. ``git worktree add /tmp/base <commit>``), interleaved over ``--rounds``; a row
stopped after ``--cap`` s is reported as such. Requests and bytes are the host's counts for that row alone.

Rows (the issue's table):
  tm_first:     TerraMesh train, ChunkDataset(S2L2A + DEM, timestamps=0, batch 64), DataLoader(2 workers):
                construction and first batch
  ssl_first:    the same over SSL4EO-S12 train
  ssl_whole:    ssl_first with members streamed whole (skip_unused=False)
  ssl_samples:  SSL4EO-S12 train with samples= 200 ids (10 in each of 20 shards): first batch
  fetch_plan:   fetch(..., locations=those 200 ids, dry_run=True)
  sample_plan:  fetch a 1 % sample spread over all of SSL4EO-S12 train (limit=2440, S2L2A + DEM), dry run: time
                to the printed estimate and to the plan
  fetch_fifth:  fetch a fifth of SSL4EO-S12 val's locations (limit=435) of DEM (small members): bytes the host
                sent over the selected bytes
  fetch_rate:   fetch 300 locations of SSL4EO-S12 val S2L2A: the transfer's rate (planning not counted); run it
                with --total (the host's cap on all responses together, e.g. 100e6) and compare with that cap

``--published PYTHON`` (an interpreter with zarr-python 2.18 and webdataset, e.g. ``.venv-zarr2/bin/python``)
adds the published TerraMesh loader to ``tm_first``, interleaved with the others: ``terramesh.py``'s multimodal
pipeline for S2L2A + DEM, batch 64, train defaults (each subset's shards resampled, 100-sample shuffle buffer,
batches of the two subsets mixed 0.8 / 0.2), reproduced with the webdataset calls it makes (it reads each shard
with ``curl``), in a ``DataLoader(batch_size=None, num_workers=2)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import machine  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROW = r"""
import json, os, sys, time
# The library under test comes from PYTHONPATH: drop an editable install's finder, which would win over it.
sys.meta_path = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
import numpy as np
import ssl4eo_zarr as sz
assert os.path.dirname(os.path.dirname(sz.__file__)) == os.environ["PYTHONPATH"], sz.__file__
from torch.utils.data import DataLoader
row, root_ssl, root_tm, tmp = sys.argv[1:5]
rng = np.random.default_rng(0)
shards = sorted(rng.choice(477, 20, replace=False).tolist())
ids = [f"{1 + 512 * s + k:07d}" for s in shards for k in sorted(rng.choice(256, 10, replace=False))]
out = {}
import inspect
takes = inspect.signature(sz.fetch).parameters
t0 = time.perf_counter()
if row == "fetch_plan":
    plan = sz.fetch(root_ssl, tmp, split="train", modalities=["S2L2A", "DEM"], locations=ids, dry_run=True)
    out["selected"] = len(plan.selected)
elif row == "sample_plan":
    kw = {}
    if "notify" in takes:
        kw["notify"] = lambda text: out.update(estimate_s=time.perf_counter() - t0, estimate=text)
    plan = sz.fetch(root_ssl, tmp, split="train", modalities=["S2L2A", "DEM"], limit=2440, dry_run=True, **kw)
    out["selected"] = len(plan.selected)
    out["selected_mb"] = plan.nbytes / 1e6
elif row in ("fetch_fifth", "fetch_rate"):
    mod, n = ("DEM", 435) if row == "fetch_fifth" else ("S2L2A", 300)
    t1 = time.perf_counter()
    dry = sz.fetch(root_ssl, tmp + "-dry", split="val", modalities=[mod], limit=n, dry_run=True)
    out["plan_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    res = sz.fetch(root_ssl, tmp + "-" + row, split="val", modalities=[mod], limit=n)
    spent = time.perf_counter() - t1
    out["selected"] = len(res.plan.selected)
    out["selected_mb"] = res.plan.nbytes / 1e6
    # The second plan reads the shard indexes kept by the first: what is left is the transfer.
    out["transfer_s"] = getattr(res, "seconds", 0.0) or spent
    out["transfer_mb_s"] = res.nbytes / 1e6 / out["transfer_s"]
else:
    kw = dict(split="train", modalities=["S2L2A", "DEM"], timestamps=0, batch_size=64, seed=0)
    if row == "ssl_samples":
        kw.update(samples=ids, batch_size=25)
    if row == "ssl_whole":  # members streamed whole (before members could be read by parts)
        if "skip_unused" in inspect.signature(sz.ChunkDataset).parameters:
            kw["skip_unused"] = False
    ds = sz.ChunkDataset(root_tm if row == "tm_first" else root_ssl, **kw)
    out["construct_s"] = time.perf_counter() - t0
    # The iterator is kept: a temporary one would be shut down (its workers joined, ~1.5 s) before the clock
    # is read.
    it = iter(DataLoader(ds, batch_size=None, num_workers=2))
    batch = next(it)
    out["seconds"] = time.perf_counter() - t0
    out["shape"] = list(batch["S2L2A"].shape)
    # The host's counts at the first batch (the row's totals below also hold what the workers read after it,
    # until the process ends).
    from urllib.request import urlopen
    counts = json.load(urlopen(root_ssl.rsplit("/", 1)[0] + "/.counts"))
    out.update(first_requests=counts["requests"], first_mb=counts["bytes"] / 1e6)
out.setdefault("seconds", time.perf_counter() - t0)
print("RESULT " + json.dumps(out), flush=True)
import os
os._exit(0)
"""


PUBLISHED = r"""
import io, json, sys, time
import braceexpand, fsspec, numpy as np, webdataset as wds, zarr
from torch.utils.data import DataLoader, default_collate
patterns = sys.argv[1:3]
t0 = time.perf_counter()  # after the imports, as for the other rows

def bands(key, value):  # what the published decoder does to each member
    if key.endswith(".zarr.zip"):
        fs = fsspec.filesystem("zip", fo=io.BytesIO(value), block_size=None)
        return zarr.open_consolidated(fs.get_mapper(""), mode="r")["bands"][...]

def aligned(shards):  # one tar stream per modality, read side by side ("[S2L2A,DEM]" in each shard's URL)
    for src in shards:
        url = src["url"].translate(str.maketrans("[]", "{}"))
        mods = url[url.index("{") + 1: url.index("}")].split(",")
        streams = [wds.tarfile_samples([{"url": u}]) for u in braceexpand.braceexpand(url)]
        for parts in zip(*streams):
            out = {"__key__": parts[0]["__key__"], "__url__": src["url"]}
            for m, part in zip(mods, parts):
                out.update({f"{m}.{k}": v for k, v in part.items() if not k.startswith("__")})
            yield out

def strip(sample):
    return {k.rsplit(".zarr", 1)[0] if k.endswith(".zarr.zip") else k: v for k, v in sample.items()}

def subset(pattern):
    return wds.DataPipeline(wds.ResampledShards(pattern, empty_check=False), wds.split_by_node, wds.split_by_worker,
                            aligned, wds.shuffle(100), wds.decode(bands), wds.map(strip),
                            wds.batched(64, collation_fn=default_collate, partial=False))

ds = wds.RandomMix([subset(p) for p in patterns], probs=[0.8, 0.2], longest=False)
it = iter(DataLoader(ds, batch_size=None, num_workers=2))  # kept, as for the other rows
batch = next(it)
out = {"construct_s": 0.0, "shape": list(batch["S2L2A"].shape), "seconds": time.perf_counter() - t0}
from urllib.request import urlopen
counts = json.load(urlopen(patterns[0].split("/terramesh", 1)[0] + "/.counts"))
out.update(first_requests=counts["requests"], first_mb=counts["bytes"] / 1e6)
print("RESULT " + json.dumps(out), flush=True)
import os
os._exit(0)
"""


def run_published(python: str, host, cap: float) -> dict:
    """The published TerraMesh loader's first batch (``tm_first``) under ``python``."""
    from ssl4eo_zarr import schema

    host.reset_counts()
    root = host.root("terramesh")
    patterns = []
    for sub in schema.get_corpus("terramesh").subsets:
        first, last = sub.ranges["train"]
        patterns.append(f"{root}/train/[S2L2A,DEM]/{sub.prefix}_shard_{{{first:06d}..{last:06d}}}.tar")
    return _run(host, cap, [python, "-c", PUBLISHED, *patterns], cwd=os.path.dirname(python))


def run_row(row: str, lib: str, host, cap: float, tmp: str) -> dict:
    host.reset_counts()
    env = dict(os.environ, PYTHONPATH=lib, SSL4EO_ZARR_CACHE=os.path.join(tmp, "cache-" + str(time.time_ns())))
    # A folder of its own per run: a fetch into another run's DEST would resume it and move nothing. Run from
    # tmp, not the checkout: `python -c` would import the package beside it.
    return _run(host, cap, [sys.executable, "-c", ROW, row, host.root("ssl4eo-s12"), host.root("terramesh"),
                            os.path.join(tmp, f"dest-{time.time_ns()}")], cwd=tmp, env=env)


def _run(host, cap: float, argv: list[str], **kw) -> dict:
    """A row's script in a process of its own, stopped after ``cap`` s: its RESULT line, the time and the host's
    counts."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=cap, **kw)
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        result = json.loads(found[-1][7:]) if found else {"error": proc.stderr.strip().splitlines()[-3:]}
    except subprocess.TimeoutExpired:
        result = {"capped": cap}
    result.update(wall_s=time.perf_counter() - started, requests=host.requests, mb=host.bytes_sent / 1e6)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--rate", type=float, default=50e6)
    ap.add_argument("--size", type=int, default=264)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cap", type=float, default=150.0)
    ap.add_argument("--total", type=float, default=None, help="the host's cap on all responses together (bytes/s)")
    ap.add_argument("--baseline", help="folder with another commit's ssl4eo_zarr package")
    ap.add_argument("--rows", default="tm_first,ssl_first,ssl_samples,fetch_plan")
    ap.add_argument("--published", metavar="PYTHON",
                    help="interpreter with zarr-python 2.18 and webdataset: adds the published loader to tm_first")
    args = ap.parse_args()

    import tempfile

    from ssl4eo_zarr.virtualhost import VirtualHost, sample_members

    print(machine())
    mods = ("S2L2A", "DEM")
    members = {"ssl4eo-s12": sample_members(args.size, mods), "terramesh": sample_members(args.size, mods,
                                                                                             corpus="terramesh")}
    print("member bytes:", {c: {m: len(b) for m, b in v.items()} for c, v in members.items()})
    libs = {"this": HERE} | ({"baseline": os.path.abspath(args.baseline)} if args.baseline else {})
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp, VirtualHost(members, latency=args.latency, rate=args.rate,
                                                                   total=args.total) as host:
        for r in range(args.rounds):
            for row in args.rows.split(","):
                configs = list(libs) + (["published"] if args.published and row == "tm_first" else [])
                for name in (configs if r % 2 == 0 else reversed(configs)):
                    res = (run_published(os.path.abspath(args.published), host, args.cap) if name == "published"
                           else run_row(row, libs[name], host, args.cap, tmp))
                    results.setdefault((row, name), []).append(res)
                    print(f"round {r} {row:12s} {name:9s} {json.dumps(res)}", flush=True)
    cap = f", {args.total / 1e6:.0f} MB/s in all" if args.total else ""
    print(f"\nlatency {args.latency * 1e3:.0f} ms, {args.rate / 1e6:.0f} MB/s per response{cap}, members {args.size} "
          f"px; median of {args.rounds} rounds")
    print(f"{'row':12s} {'code':8s} {'seconds':>9s} {'requests':>9s} {'MB':>8s}  notes (first batch rows: requests and "
          "MB at the first batch; the totals add the workers' reading until the row's process ended)")
    for (row, name), rs in results.items():
        rs = sorted(rs, key=lambda x: x.get("seconds", float("inf")))
        mid = rs[len(rs) // 2]
        secs = f"{mid['seconds']:.1f}" if "seconds" in mid else f">{args.cap:.0f}"
        notes = []
        if "estimate_s" in mid:
            notes.append(f"estimate printed after {mid['estimate_s']:.1f} s")
        if "selected_mb" in mid and row == "fetch_fifth":
            notes.append(f"moved {mid['mb'] / mid['selected_mb']:.2f} x the selected {mid['selected_mb']:.0f} MB")
        if "first_requests" in mid:
            notes.append(f"at the first batch {mid['first_requests']} requests, {mid['first_mb']:.0f} MB")
        if "transfer_mb_s" in mid:
            ratio = f" = {mid['transfer_mb_s'] * 1e6 / args.total:.2f} x the cap" if args.total else ""
            notes.append(f"transfer {mid['transfer_s']:.1f} s, {mid['transfer_mb_s']:.0f} MB/s{ratio}")
        print(f"{row:12s} {name:8s} {secs:>9s} {mid['requests']:>9d} {mid['mb']:>8.0f}  {'; '.join(notes)}")


if __name__ == "__main__":
    main()
