"""How steady the link probe is: what ``costmodel.probe`` measures, each time in a fresh Python process (the
first probe of a process is the one a user's fetch or loader gets), against a host with and without a cap on
all responses together.

    python benchmarks/probe.py [--latency 0.05] [--rate 50e6] [--total 100e6] [--runs 8] [--baseline PATH]
                               [--fresh-host]

The host is ``ssl4eo_zarr.virtualhost.VirtualHost`` (``latency`` s before each response, ``rate`` bytes/s per
response, ``total`` bytes/s for all responses together or none). A probe that takes an uncapped host for a
capped one plans fetches for a fraction of the link and flips the cost model's walk-or-read-through choice.
``--baseline``: a folder holding another commit's ``ssl4eo_zarr``, run interleaved with this checkout's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loader import machine  # noqa: E402

PROBE = ("import sys; from ssl4eo_zarr import costmodel; link = costmodel.probe(sys.argv[1]); "
         "print(link.rtt, link.rate, link.total)")
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one(code_root: str, url: str) -> tuple[float, float, float | None]:
    env = dict(os.environ, PYTHONPATH=code_root)
    out = subprocess.run([sys.executable, "-c", PROBE, url], capture_output=True, text=True, env=env, timeout=300,
                         check=True)
    rtt, rate, total = out.stdout.split()
    return float(rtt), float(rate), None if total == "None" else float(total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--rate", type=float, default=50e6)
    ap.add_argument("--total", type=float, default=100e6, help="the capped host's cap (bytes/s)")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--baseline", help="folder with another commit's ssl4eo_zarr package")
    ap.add_argument("--fresh-host", action="store_true",
                    help="each probe against a host just started (its first requests), as a script's first probe")
    args = ap.parse_args()

    from ssl4eo_zarr import schema
    from ssl4eo_zarr.virtualhost import VirtualHost, sample_members

    print(machine())
    codes = {"this": HERE, **({"baseline": args.baseline} if args.baseline else {})}
    members = {"ssl4eo-s12": sample_members(64, ("S2L2A",))}
    print(f"latency {args.latency * 1e3:.0f} ms, {args.rate / 1e6:.0f} MB/s per response; "
          f"{args.runs} probes each, one fresh process per probe")
    print(f"{'host':<22} {'code':<9} {'capped found':>12} {'rtt ms':>12} {'rate MB/s':>12} {'cap found MB/s':>16}")
    for total in (None, args.total):
        got: dict[str, list[tuple[float, float, float | None]]] = {c: [] for c in codes}
        with contextlib.ExitStack() as stack:
            warm = None if args.fresh_host else stack.enter_context(
                VirtualHost(members, latency=args.latency, rate=args.rate, total=total))
            for _ in range(args.runs):
                for name, root in codes.items():  # interleaved: this machine's speed drifts
                    with contextlib.nullcontext(warm) if warm is not None else \
                            VirtualHost(members, latency=args.latency, rate=args.rate, total=total) as host:
                        got[name].append(one(root, host.root() + "/val/S2L2A/" + schema.shard_name(1)))
        label = ("no cap" if total is None else f"cap {total / 1e6:.0f} MB/s") + (", fresh" if args.fresh_host else "")
        for name, runs in got.items():
            caps = [t / 1e6 for _r, _b, t in runs if t is not None]
            rtts = sorted(r * 1e3 for r, _b, _t in runs)
            rates = sorted(b / 1e6 for _r, b, _t in runs)
            cap_text = f"{min(caps):.0f}-{max(caps):.0f}" if caps else "-"
            print(f"{label:<22} {name:<9} {len(caps):>9}/{len(runs):<2} {rtts[0]:>5.1f}-{rtts[-1]:<5.1f} "
                  f"{rates[0]:>5.1f}-{rates[-1]:<5.1f} {cap_text:>16}")


if __name__ == "__main__":
    main()
