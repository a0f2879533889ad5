"""Warm-up and epoch turns of ChunkDataset with persistent workers, configurations interleaved over rounds.

    python benchmarks/epochs.py [--workers 2] [--per-worker 4] [--epochs 5] [--rounds 3] [--pace 0.8]
                                [--data bench-data/node] [--compare-with DIR] [--warm-gb GB]

Each run is a fresh process (no memory or page state carried between configurations) over the full-size files of
``benchmarks/node.py``. Per configuration: epochs 1 (worker start, buffers being made) and 2 (the first to end with
a read-ahead) against the epochs after them, the arena memory each worker made in epoch 1, and the epoch turns
(first batch after iteration starts) of epochs 2 and 3..: a worker reads its next epoch's first batch ahead from
its second epoch on (``prepare_next_epoch``), so the turn into epoch 2 is never prepared. Configurations:
read-ahead default (on for local files) and off, each with a consumer that takes batches as fast as they come and
with one paced at ``--pace`` of the steady rate (a training step the loader keeps up with). ``--compare-with DIR``
adds the same runs of another checkout of the package (e.g. ``git worktree add /tmp/before <commit>``), its default
configuration only, labelled with its commit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def child(cfg: dict) -> None:
    sys.path.insert(0, HERE)
    from node import chunkdataset

    if cfg.get("warm_gb"):
        # Touch and free this much memory right before the run: on a VM whose host takes freed guest memory back
        # (free page reporting), the first touch of a page costs up to 9 s/GB instead of ~0.5 s/GB, which
        # would measure the host rather than the loader (see docs/benchmarks.md).
        import numpy as np

        ballast = np.ones(int(cfg["warm_gb"] * 2**30), np.uint8)
        del ballast
    r = chunkdataset(cfg["data"], cfg["workers"], cfg["epochs"], read_ahead=cfg["read_ahead"], pace=cfg["pace"])
    print(json.dumps(r))


def run(code: str, cfg: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": code}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def commit_of(code: str) -> str:
    try:
        return subprocess.run(["git", "-C", code, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.path.basename(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-worker", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pace", type=float, default=0.8)
    parser.add_argument("--size", type=int, default=264)
    parser.add_argument("--data", default="bench-data/node")
    parser.add_argument("--compare-with", default=None)
    parser.add_argument("--warm-gb", type=float, default=0.0,
                        help="touch and free this many GB in each run's process before it starts (0: none)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    sys.path.insert(0, HERE)
    from loader import machine
    from node import ensure_files

    ensure_files(args.data, args.per_worker * args.workers, args.size)
    this = os.path.dirname(HERE)
    codes = [("this", this)] + ([(commit_of(args.compare_with), args.compare_with)] if args.compare_with else [])
    base = {"data": args.data, "workers": args.workers, "epochs": args.epochs, "warm_gb": args.warm_gb}
    results: dict[tuple, list[dict]] = {}
    for rnd in range(args.rounds):
        steady = None
        for label, code in codes:
            for read_ahead in ((None, False) if label == "this" else (None,)):
                for paced in (False, True):
                    if paced and steady is None:
                        continue
                    pace = 1 / (args.pace * steady) if paced else 0.0
                    r = run(code, {**base, "read_ahead": read_ahead, "pace": pace})
                    if label == "this" and read_ahead is None and not paced:
                        steady = r["rate"]
                    key = (label, "default" if read_ahead is None else "off", paced)
                    results.setdefault(key, []).append(r)
                    print(f"# round {rnd + 1} {key}: epoch rates {[round(x) for x in r['rates']]}, "
                          f"turns {[round(x, 2) for x in r['turns']]}, read-ahead {r['read_ahead']}, "
                          f"arenas GB/worker {[round(x, 2) for x in r.get('arenas_gb', [])]}", flush=True)
    print(f"\n# {machine()}; {args.workers} workers, {args.per_worker} files each, {args.epochs} epochs, "
          f"{args.rounds} rounds interleaved (medians); paced consumer at {args.pace} of the steady rate; "
          f"{args.warm_gb} GB touched and freed before each run")
    print("\n| code | read-ahead | consumer | epochs 3.. /s | epoch 1 /s (x 3..) | epoch 2 /s (x 3..) | "
          "arenas GB / worker after epoch 1 | turn into epoch 2 s | turns into epochs 3.. s (max) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    med = statistics.median
    for (label, ra, paced), rs in results.items():
        late = med(later_rate(r) for r in rs)
        e1, e2 = med(r["rates"][0] for r in rs), med(r["rates"][1] for r in rs)
        arenas = med(r["arenas_gb"][0] for r in rs) if all("arenas_gb" in r for r in rs) else float("nan")
        print(f"| {label} | {ra} | {'paced' if paced else 'unpaced'} | {late:.0f} | {e1:.0f} ({e1 / late:.2f}) | "
              f"{e2:.0f} ({e2 / late:.2f}) | {arenas:.2f} | {med(r['turns'][0] for r in rs):.2f} | "
              f"{med(r['turn'] for r in rs):.2f} |")


def later_rate(r: dict) -> float:
    """Epochs 3.. together (every epoch from the one that starts with a batch read ahead), harmonic."""
    rates = r["rates"][2:] or r["rates"][1:]
    return len(rates) / sum(1 / x for x in rates)


if __name__ == "__main__":
    main()
