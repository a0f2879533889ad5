"""``ssl4eo-zarr``: a thin command line over the library. Each subcommand parses arguments and calls one function."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence


def _progress(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None, **kwargs)


def cmd_info(args: argparse.Namespace) -> int:
    from .summary import describe

    print(describe(args.path, split=args.split))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate

    report = validate(args.path, split=args.split, size=args.size, check_values=not args.no_values,
                      progress=_progress, client=args.scheduler)
    print(report.format(verbose=args.verbose))
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, n_files=args.files, samples=args.samples, size=args.size, workers=args.workers,
             seed=args.seed, build_locations=args.build_locations)
    return 0


def cmd_quicklook(args: argparse.Namespace) -> int:
    from . import open_dataset
    from .plot import quicklook

    ds = open_dataset(args.path)
    fig = quicklook(ds, args.sample)
    fig.savefig(args.out, dpi=args.dpi, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from . import open_dataset
    from .stats import band_stats

    ds = open_dataset(args.path, split=args.split)
    for result in band_stats(ds, args.modality or None, progress=True).values():
        print(result.compare())
    return 0


def _floats(text: str | None, n: int | None = None, name: str = "") -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or (n is not None and len(values) != n):
        raise SystemExit(f"{name or 'argument'}: expected {n or 'some'} comma-separated numbers, got {text!r}")
    return values


def _ints(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"{name}: expected comma-separated whole numbers, got {text!r}") from None


#: Options whose value may start with a minus sign (``--bbox -10,35,30,60``): argparse would take it for an option.
_SIGNED = ("--bbox",)
_NUMBERS = re.compile(r"^-[\d.]+(,-?[\d.]+)*$")


def _join_signed(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        if items[i] in _SIGNED and i + 1 < len(items) and _NUMBERS.match(items[i + 1]):
            out.append(f"{items[i]}={items[i + 1]}")
            i += 2
            continue
        out.append(items[i])
        i += 1
    return out


def cmd_fetch(args: argparse.Namespace) -> int:
    from .fetching import FetchPlan, fetch

    result = fetch(args.src, args.dst, split=args.split, modalities=args.modalities.split(","),
                   locations=args.locations, bbox=_floats(args.bbox, 4, "--bbox"), months=_ints(args.months, "--months"),
                   dates=args.dates.split(",") if args.dates else None, max_cloud=args.max_cloud,
                   metadata=args.metadata, limit=args.limit, seed=args.seed, to=args.to, workers=args.workers,
                   dry_run=args.dry_run, progress=_progress, index=args.index, index_workers=args.index_workers,
                   notify=lambda text: print(text, file=sys.stderr, flush=True), client=args.scheduler)
    if isinstance(result, FetchPlan):
        print(result.summary())
        return 0
    print(result.plan.summary())
    written = sum(len(v) for v in result.files.values())
    rate = result.nbytes / result.seconds / 1e6 if result.seconds else 0.0
    print(f"wrote {result.locations} locations in {written} files under {args.dst} ({result.nbytes / 1e9:.3f} GB "
          f"moved in {result.seconds:.1f} s, {rate:.0f} MB/s; {result.reused} members reused from an earlier run)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .fetching import verify

    problems = verify(args.dst)
    for line in problems:
        print(line)
    print(f"{args.dst}: {'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


def cmd_index(args: argparse.Namespace) -> int:
    from .shardindex import load_index, write_index

    out = write_index(args.src, args.output, split=args.split, modalities=args.modalities.split(","),
                      workers=args.workers, progress=_progress)
    index = load_index(out)
    shards = {s for m in index.modalities for s in index.shard_names(m)}
    print(f"indexed {len(shards)} shards x {len(index.modalities)} modalities of {args.split} "
          f"({index.rows} members) into {out} ({os.path.getsize(out) / 1e6:.1f} MB)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from . import convert

    if args.to == "shards":
        written = convert.chunks_to_shards(args.src, args.dst, split=args.split, modalities=args.modality or None,
                                              per_shard=args.per_shard, progress=_progress,
                                              fix_s1_order=not args.s1_as_stored)
        print(f"wrote {sum(len(v) for v in written.values())} shards under {args.dst}/{args.split}")
    else:
        names = convert.shards_to_chunks(args.src, args.dst, split=args.split, modalities=args.modality or None,
                                            progress=_progress, fix_s1_order=not args.s1_as_stored)
        print(f"wrote {len(names)} chunk files per modality under {args.dst}/{args.split}")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from .repair import repair_files

    results = repair_files(args.paths, args.out, progress=_progress)
    for r in results:
        what = f"reordered S1 of {r.moved} locations" if r.moved else "already in time_ order, unchanged"
        print(f"{r.target}: {what}")
    print(f"{sum(r.moved > 0 for r in results)} of {len(results)} files repaired")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .builder import build_dataset
    from .builder.cloud import ENV_CONFIG, ENV_WEIGHTS

    # Through the environment, so that dask worker processes started by the build see them too.
    for var, value in ((ENV_CONFIG, args.sensei_config), (ENV_WEIGHTS, args.sensei_weights)):
        if value:
            os.environ[var] = os.path.abspath(value)

    val = None
    if args.val_list:
        with open(args.val_list, encoding="utf-8") as f:
            val = [line.strip() for line in f if line.strip()]
    manifest = build_dataset(args.raw, args.out, seed=args.seed, size=args.size, workers=args.workers,
                             scheduler=args.scheduler, cloud_mask=args.cloud_mask, val_fraction=args.val_fraction,
                             val_locations=val, drop_remainder=args.drop_remainder, keep_staging=args.keep_staging,
                             progress=_progress)
    s = manifest["summary"]
    print(f"{s['locations']} locations: {s['written']} written, {s['dropped']} dropped; files: train "
          f"{s['files']['train']}, val {s['files']['val']}; manifest: {args.out}/manifest.json")
    return 0


def cmd_sample_locations(args: argparse.Namespace) -> int:
    from .builder.sampling import overlapping_pairs, read_cities, sample_locations, write_locations

    points = sample_locations(read_cities(args.cities), args.n, seed=args.seed, sigma_km=args.sigma_km,
                              exact=not args.published_method)
    write_locations(args.out, points)
    print(f"wrote {len(points)} locations to {args.out}"
          + (f" ({overlapping_pairs(points)} overlapping pairs)" if len(points) <= 5000 else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .shardindex import WALK_WORKERS
    parser = argparse.ArgumentParser(prog="ssl4eo-zarr", description="Build and read SSL4EO-S12 v1.1 chunk files.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="make demo data, open it, stream an epoch, write a quicklook")
    p.add_argument("--out", default="ssl4eo-demo", help="folder for the demo dataset (default: ./ssl4eo-demo)")
    p.add_argument("--files", type=int, default=3, help="chunk files (default 3)")
    p.add_argument("--samples", type=int, default=16, help="locations per file (default 16)")
    p.add_argument("--size", type=int, default=264, help="patch edge in px (default 264)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--build-locations", type=int, default=4, help="raw locations to build from GeoTIFFs (0: skip)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="summarise a chunk file, split folder or dataset root")
    p.add_argument("path")
    p.add_argument("--split", default=None)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("validate", help="check files against the format; exit 1 on problems")
    p.add_argument("path")
    p.add_argument("--split", default=None)
    p.add_argument("--size", type=int, default=None, help="expected patch edge (default 264)")
    p.add_argument("--no-values", action="store_true", help="skip decoding every chunk for value checks")
    p.add_argument("-v", "--verbose", action="store_true", help="list files without problems too")
    p.add_argument("--scheduler", default=None, help="address of a dask scheduler: files are checked by its workers")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("quicklook", help="plot the 4 timestamps of one location (S2 RGB, S1, cloud classes)")
    p.add_argument("path")
    p.add_argument("--sample", default=0, help="sample index or 7-digit id (default 0)")
    p.add_argument("--out", default="quicklook.png")
    p.add_argument("--dpi", type=int, default=110)
    p.set_defaults(func=cmd_quicklook)

    p = sub.add_parser("stats", help="per-band mean/std/histogram over a split, against the published statistics")
    p.add_argument("path")
    p.add_argument("--split", default=None)
    p.add_argument("--modality", action="append", help="repeat for several (default: all present)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("fetch", help="fetch a subset (split, modalities, ids, region, months, cloud cover) from a host",
                       description="Plan from indexes only, then move only the selected locations' members into a "
                                   "dataset root of its own; rerun to resume.")
    p.add_argument("src", help="dataset root: path, http(s):// host, hf://datasets/..., s3://")
    p.add_argument("dst", help="local folder to write (rerun with the same arguments to resume)")
    p.add_argument("--split", default="val")
    p.add_argument("--modalities", required=True, help="comma-separated, e.g. S2L2A,S1GRD")
    p.add_argument("--locations", help="text file of 7-digit location ids, one a line (TerraMesh: member keys too; "
                   "an id takes its four one-season members, <id>_<season> one)")
    p.add_argument("--bbox", help="W,S,E,N in degrees (patch centres)")
    p.add_argument("--months", help="comma-separated months 1..12: locations with an S2 acquisition in one")
    p.add_argument("--dates", help="START,END: locations whose S2 acquisitions all fall within")
    p.add_argument("--max-cloud", type=float, help="cloud fraction 0..1 at most, in every timestamp")
    p.add_argument("--metadata", help="metadata table (default: the one published at the source root)")
    p.add_argument("--limit", type=int, help="at most this many locations, drawn with --seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--to", choices=("shards", "chunks"), help="output distribution (default: as the source)")
    p.add_argument("--workers", type=int, default=None,
                   help="member requests in flight (default: from the measured link, 8 to 64)")
    p.add_argument("--dry-run", action="store_true", help="print the selection, bytes and estimated time; write nothing")
    p.add_argument("--index", help="index file of the source (`ssl4eo-zarr index`): plan without reading tar headers")
    p.add_argument("--index-workers", type=int, default=WALK_WORKERS,
                   help=f"shards indexed at once (tar header walks; default {WALK_WORKERS})")
    p.add_argument("--scheduler", default=None,
                   help="address of a dask scheduler: output shards are made by its workers (DEST on a shared disk)")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("verify", help="check a fetched dataset: finished, every selected location there, intact",
                       description="Compare DEST with its fetch manifest: the fetch finished, every planned file holds "
                                   "the locations of the selection, every file has its size and CRC-32. Exit 1 on "
                                   "problems.")
    p.add_argument("dst", help="a folder written by `ssl4eo-zarr fetch`")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("index", help="write one Parquet file locating every member of a split's shards",
                       description="Walk the tar headers of a split's shards once (many at a time) and write every "
                                   "member's shard, key, offset and size per modality, with each shard's size and "
                                   "version, to one file: ChunkDataset(index=), open_dataset(index=) and fetch "
                                   "--index then read no header.")
    p.add_argument("src", help="dataset root of WebDataset shards: path, http(s):// host, hf://datasets/..., s3://")
    p.add_argument("--split", default="train")
    p.add_argument("--modalities", required=True, help="comma-separated, e.g. S2L2A,DEM")
    p.add_argument("-o", "--output", required=True, help="the Parquet file to write")
    p.add_argument("--workers", type=int, default=WALK_WORKERS, help=f"shards walked at once (default {WALK_WORKERS})")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("convert", help="convert between chunk files and WebDataset tar shards")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", choices=("shards", "chunks"), required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--modality", action="append", help="repeat for several (default: all present)")
    p.add_argument("--per-shard", type=int, default=512, help="locations per shard (default 512)")
    p.add_argument("--s1-as-stored", action="store_true",
                   help="copy S1GRD as stored (default: each location in time order, as the readers deliver it)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("repair", help="rewrite S1GRD files from before the 2026-02-19 fix in time_ order")
    p.add_argument("paths", nargs="+", help="S1GRD chunk files or folders holding them")
    p.add_argument("--out", default=None, help="write repaired copies under this folder (default: in place)")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("build", help="raw Sentinel-1/2 GeoTIFFs -> chunk files (dask.distributed)")
    p.add_argument("raw")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=264)
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (0: run in this process)")
    p.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    p.add_argument("--cloud-mask", default="auto",
                   help="auto | file | scl | sensei | fallback:land | fallback:no-data (default auto)")
    p.add_argument("--val-fraction", type=float, default=0.01)
    p.add_argument("--val-list", default=None, help="file listing raw location names for the val split")
    p.add_argument("--drop-remainder", action="store_true")
    p.add_argument("--sensei-config", default=None, help="SEnSeIv2 model config.yaml (local; for --cloud-mask sensei)")
    p.add_argument("--sensei-weights", default=None, help="SEnSeIv2 model weights.pt (local)")
    p.add_argument("--keep-staging", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("sample-locations", help="draw non-overlapping patch centres around cities (v1 procedure)")
    p.add_argument("cities", help="CSV with lat/lon columns")
    p.add_argument("n", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigma-km", type=float, default=50.0)
    p.add_argument("--out", default="locations.csv")
    p.add_argument("--published-method", action="store_true",
                   help="search only the centre's own 1-degree cell, as published (misses overlaps across borders)")
    p.set_defaults(func=cmd_sample_locations)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_join_signed(sys.argv[1:] if argv is None else argv))
    from .errors import SSL4EOError

    start = time.perf_counter()
    try:
        code = args.func(args)
    except SSL4EOError as exc:
        print(f"ssl4eo-zarr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a host that refuses us: the message says it, a traceback would not
        print(f"ssl4eo-zarr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ssl4eo-zarr {args.command}: interrupted; rerun the same command to resume where possible",
              file=sys.stderr)
        return 130
    if os.environ.get("SSL4EO_ZARR_TIMING"):
        print(f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
