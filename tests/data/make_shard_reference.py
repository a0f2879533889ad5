"""Writes ``shards218/val/<MOD>/ssl4eos12_shard_000001.tar``: WebDataset shards whose members were written by
xarray + zarr-python 2.18 itself (``Dataset.to_zarr`` into a ``zarr.ZipStore``, zarr's own chunking), in the
published member layout, so the tests can prove that shards from the published tools read here unchanged.

Run under zarr-python 2.18 from the repository root:  python tests/data/make_shard_reference.py
The content is :func:`reference_members` below (synthetic data, recomputed by the tests).
"""

import io
import os
import tarfile
import tempfile

import zarr

from ssl4eo_zarr import convert, synthetic

HERE = os.path.dirname(os.path.abspath(__file__))
MODALITIES = ("S2L2A", "S1GRD", "DEM")


def reference_members():
    """{modality: [(key, member Dataset)]} for 3 locations of 24 px."""
    locs = synthetic.sample_locations(3, seed=21)
    chunk = synthetic.make_chunk(locs, size=24, seed=21)
    import numpy as np

    rng = np.random.default_rng(21 + 17)
    out = {m: [] for m in MODALITIES}
    for i, key in enumerate(locs.ids):
        extra = synthetic._extra_members(chunk, i, rng)
        for m in MODALITIES:
            ds = extra[m] if m == "DEM" else convert.location_dataset(chunk[m], i, m)
            ds.attrs.pop("sample", None)
            out[m].append((str(key), ds))
    return out


def write_tar_218(path, members, encoding=None) -> None:
    """``(key, member Dataset)`` pairs as a tar shard whose members xarray + zarr-python 2.18 wrote (``encoding``
    as ``Dataset.to_zarr`` takes it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, ds in members:
            with tempfile.TemporaryDirectory() as tmp:
                zpath = os.path.join(tmp, "m.zarr.zip")
                store = zarr.ZipStore(zpath, mode="w")
                ds.to_zarr(store, consolidated=True, encoding=encoding)
                store.close()
                data = open(zpath, "rb").read()
            info = tarfile.TarInfo(f"{key}.zarr.zip")
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    print("wrote", path)


def main() -> None:
    assert zarr.__version__.startswith("2.18"), "write the reference with zarr-python 2.18"
    for m, members in reference_members().items():
        write_tar_218(os.path.join(HERE, "shards218", "val", m, "ssl4eos12_shard_000001.tar"), members)


if __name__ == "__main__":
    main()
