"""Writes ``zarr218_<MOD>.zarr.zip``: chunk files written by xarray + zarr-python 2.18 itself (not by this
library), so the tests can prove that files from the published tools open here unchanged, under any zarr.

Run under zarr-python 2.18 from the repository root:  python tests/data/make_reference.py
The content is ``synthetic.make_chunk(sample_locations(6, seed=11), size=24, seed=11)``.
"""

import os

import zarr

from ssl4eo_zarr import synthetic

HERE = os.path.dirname(os.path.abspath(__file__))


def reference_chunk():
    return synthetic.make_chunk(synthetic.sample_locations(6, seed=11), size=24, seed=11)


def main() -> None:
    assert zarr.__version__.startswith("2.18"), "write the reference with zarr-python 2.18"
    for mod, ds in reference_chunk().items():
        path = os.path.join(HERE, f"zarr218_{mod}.zarr.zip")
        if os.path.exists(path):
            os.remove(path)
        store = zarr.ZipStore(path, mode="w")
        # As the published files: one chunk per timestamp for every variable with a time axis.
        ds.chunk({"time": 1}).to_zarr(store, consolidated=True)
        store.close()
        print("wrote", path)


if __name__ == "__main__":
    main()
