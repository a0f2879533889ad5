"""Writes ``terramesh218/val/<MOD>/{majortom_shard_000001,ssl4eos12_shard_000002}.tar``: TerraMesh-layout shards
whose members were written by xarray + zarr-python 2.18 itself (``Dataset.to_zarr`` into a ``zarr.ZipStore``,
zarr's own chunking), one timestamp per member, S1GRD only in the SSL4EO-S12 shard and S1RTC only in the Major
TOM one, numbered as TerraMesh numbers them (SSL4EO-S12 shards after the Major TOM ones), so the tests can prove
that TerraMesh shards from the published tools read here unchanged.

Run under zarr-python 2.18 from the repository root:  python tests/data/make_terramesh_reference.py
The content is :func:`reference_members` below (synthetic data, recomputed by the tests).
"""

import os

import zarr

from ssl4eo_zarr import schema, synthetic

HERE = os.path.dirname(os.path.abspath(__file__))


def reference_members():
    """``{subset: [(key, {modality: member Dataset})]}``: 3 Major TOM and 3 SSL4EO-S12 locations of 16 px."""
    return synthetic.terramesh_members(3, 3, size=16, seed=5, split="val")


def main() -> None:
    from make_shard_reference import write_tar_218  # beside this script

    assert zarr.__version__.startswith("2.18"), "write the reference with zarr-python 2.18"
    for number, (prefix, items) in enumerate(reference_members().items(), start=1):
        for m in schema.TERRAMESH.subset(prefix).modalities:
            write_tar_218(os.path.join(HERE, "terramesh218", "val", m, schema.shard_name(number, prefix)),
                          [(key, members[m]) for key, members in items])


if __name__ == "__main__":
    main()
