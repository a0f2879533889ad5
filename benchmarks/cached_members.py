"""Chunk-file members read back from ``cache_dir`` (the zip reader's cache path), as a cached epoch reads them.

    python benchmarks/cached_members.py [--data bench-data/node] [--rounds 5]

Serves the S2L1C file of ``benchmarks/node.py``'s data over a local HTTP server, reads every ``bands`` chunk once
through ``ZipArchive(url, cache_dir=...)`` to fill the cache, then times further passes (best of ``--rounds``):
each read comes from the cache folder, checked against its CRC-32. Compare two versions of the package by
running it with ``PYTHONPATH`` set to each checkout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="bench-data/node")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from loader import machine
    from node import ensure_files

    from ssl4eo_zarr.storage import ZipArchive, thread_scratch
    from ssl4eo_zarr.testing import RangeHTTPServer
    from ssl4eo_zarr.zarrv2 import read_group

    name = ensure_files(args.data, 1, 264)[0]
    root = os.path.join(args.data, "train")
    cache = tempfile.mkdtemp(prefix="cached-members-")
    try:
        with RangeHTTPServer(root) as server:
            def one_pass() -> tuple[float, int]:
                archive = ZipArchive(f"{server.url}/S2L1C/{name}", cache_dir=cache)
                meta = read_group(archive).arrays["bands"]
                scratch = thread_scratch()
                t0, n = time.perf_counter(), 0
                for t in range(meta.shape[1]):
                    n += len(archive.read_into(meta.chunk_key((0, t, 0, 0, 0)), scratch))
                archive.close()
                return time.perf_counter() - t0, n

            one_pass()  # fills the cache
            passes = [one_pass() for _ in range(args.rounds)]
        seconds, n = min(passes)
        print(f"# {machine()}")
        print(f"cached pass: {n / 1e6:.0f} MB of stored chunks in {seconds:.3f} s ({n / seconds / 1e9:.2f} GB/s)")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
