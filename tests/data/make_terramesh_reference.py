"""Writes ``terramesh218/val/<MOD>/{majortom_shard_000001,ssl4eos12_shard_000002}.tar``: TerraMesh-layout shards
whose members were written by xarray + zarr-python 2.18 itself (``Dataset.to_zarr`` into a ``zarr.ZipStore``,
zarr's own chunking), one timestamp per member, S1GRD only in the SSL4EO-S12 shard and S1RTC only in the Major
TOM one, numbered as TerraMesh numbers them (SSL4EO-S12 shards after the Major TOM ones), so the tests can prove
that TerraMesh shards from the published tools read here unchanged.

Run under zarr-python 2.18 from the repository root:  python tests/data/make_terramesh_reference.py
The content is :func:`reference_members` below (synthetic data, recomputed by the tests).
"""

import io
import os
import tarfile
import tempfile

import zarr

from ssl4eo_zarr import schema, synthetic

HERE = os.path.dirname(os.path.abspath(__file__))


def reference_members():
    """``{subset: [(key, {modality: member Dataset})]}``: 3 Major TOM and 3 SSL4EO-S12 locations of 16 px."""
    return synthetic.terramesh_members(3, 3, size=16, seed=5, split="val")


def main() -> None:
    assert zarr.__version__.startswith("2.18"), "write the reference with zarr-python 2.18"
    for number, (prefix, items) in enumerate(reference_members().items(), start=1):
        for m in schema.TERRAMESH.subset(prefix).modalities:
            path = os.path.join(HERE, "terramesh218", "val", m, schema.shard_name(number, prefix))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for key, members in items:
                    with tempfile.TemporaryDirectory() as tmp:
                        zpath = os.path.join(tmp, "m.zarr.zip")
                        store = zarr.ZipStore(zpath, mode="w")
                        members[m].to_zarr(store, consolidated=True)
                        store.close()
                        data = open(zpath, "rb").read()
                    info = tarfile.TarInfo(f"{key}.zarr.zip")
                    info.size = len(data)
                    info.mtime = 0
                    tar.addfile(info, io.BytesIO(data))
            print("wrote", path)


if __name__ == "__main__":
    main()
