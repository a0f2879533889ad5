"""Writes ``terramesh218/val/<MOD>/majortom_shard_{000001..000008}.tar`` and ``ssl4eos12_shard_000009.tar``: a
TerraMesh val split in the published numbering whose members were written by xarray + zarr-python 2.18 itself
(``Dataset.to_zarr`` into a ``zarr.ZipStore``, zarr's own chunking), as the card shows them: running keys over the
split (``majortom_val_0000001`` ..., ``ssl4eos12_val_0000017`` ...), one timestamp each, a ``sample`` coordinate
(``<id>_<season>``: each SSL4EO-S12 location is four members), ``time`` datetime64 (int64 ns since 1970 with CF
units, the integers the published loader returns), S1GRD only in the SSL4EO-S12 shard and S1RTC only in the Major
TOM ones. The tests prove that TerraMesh shards from the published tools read here, and ours there, unchanged.

Run under zarr-python 2.18 from the repository root:  python tests/data/make_terramesh_reference.py
The content is :func:`reference_members` below (synthetic data, recomputed by the tests).
"""

import os
import shutil

import zarr

from ssl4eo_zarr import schema, synthetic

HERE = os.path.dirname(os.path.abspath(__file__))
#: Major TOM samples per Major TOM shard (eight shards, as published for val), SSL4EO-S12 locations (shard 9).
PER_MAJORTOM_SHARD, N_MAJORTOM_SHARDS, N_SSL_LOCATIONS = 2, 8, 3


def reference_members():
    """``{subset: [(key, {modality: member Dataset})]}``: 16 Major TOM samples and 3 SSL4EO-S12 locations x 4
    seasons, 16 px."""
    return synthetic.terramesh_members(PER_MAJORTOM_SHARD * N_MAJORTOM_SHARDS, N_SSL_LOCATIONS, size=16, seed=5,
                                       split="val")


def reference_shards():
    """``[(shard number, subset, [(key, members)])]`` in the published numbering."""
    members = reference_members()
    mt = members["majortom"]
    out = [(k + 1, "majortom", mt[k * PER_MAJORTOM_SHARD:(k + 1) * PER_MAJORTOM_SHARD])
           for k in range(N_MAJORTOM_SHARDS)]
    return out + [(N_MAJORTOM_SHARDS + 1, "ssl4eos12", members["ssl4eos12"])]


def main() -> None:
    from make_shard_reference import write_tar_218  # beside this script

    assert zarr.__version__.startswith("2.18"), "write the reference with zarr-python 2.18"
    shutil.rmtree(os.path.join(HERE, "terramesh218"), ignore_errors=True)
    ns = {"time": {"units": schema.TIME_UNITS, "dtype": "int64"}}
    for number, prefix, items in reference_shards():
        for m in schema.TERRAMESH.subset(prefix).modalities:
            write_tar_218(os.path.join(HERE, "terramesh218", "val", m, schema.shard_name(number, prefix)),
                          [(key, members[m]) for key, members in items], encoding=ns)


if __name__ == "__main__":
    main()
