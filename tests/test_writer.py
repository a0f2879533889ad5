import json
import os
import zipfile

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from ssl4eo_zarr import SchemaError, schema, synthetic, write_chunk

from .helpers import ZARR3, xr_open_zarr


@pytest.fixture(scope="module")
def chunk():
    return synthetic.make_chunk(synthetic.sample_locations(5, seed=2), size=24, seed=2)


@pytest.mark.parametrize("mod", list(schema.CHUNK_MODALITIES))
def test_written_file_opens_with_xarray_and_zarr_like_the_published_ones(chunk, mod, tmp_path):
    path = write_chunk(chunk[mod], tmp_path / f"{mod}.zarr.zip", size=24)
    ds = xr_open_zarr(path)
    xr.testing.assert_identical(ds.load(), chunk[mod])
    assert ds["bands"].dtype == schema.MODALITIES[mod].dtype
    assert ds["bands"].encoding["chunks"] == (5, 1, schema.MODALITIES[mod].n_bands, 24, 24)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert len(names) == len(set(names)), "duplicate zip entries"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        meta = json.loads(zf.read(".zmetadata"))["metadata"]
    zarray = meta["bands/.zarray"]
    assert zarray["compressor"] == {"blocksize": 0, "clevel": 5, "cname": "lz4", "id": "blosc", "shuffle": 1}
    assert zarray["zarr_format"] == 2 and zarray["order"] == "C"
    assert meta["bands/.zattrs"]["_ARRAY_DIMENSIONS"] == ["sample", "time", "band", "y", "x"]
    assert meta["time_/.zattrs"]["units"] == "nanoseconds since 1970-01-01"
    assert ("cloud_mask/.zarray" in meta) == (mod != "S1GRD")


#: Zip entry fields that must agree with zarr 2.18's; the rest of an entry is its name and bytes, compared too.
ENTRY_FIELDS = ("compress_type", "external_attr", "create_system", "create_version", "extract_version", "flag_bits",
                "extra", "internal_attr", "comment", "file_size", "compress_size", "CRC")


def assert_same_archive(mine: str, ref: str) -> None:
    """Every member of one archive equals the other's: the same names, the same bytes, the same zip entry
    fields (:data:`ENTRY_FIELDS`). Not compared: the order of the entries and their modification times, which
    zarr 2.18 itself never writes the same way twice (the order follows Python's hash seed and dask's
    scheduling; each entry is stamped with the time of writing)."""
    with zipfile.ZipFile(mine) as a, zipfile.ZipFile(ref) as b:
        ia = {i.filename: i for i in a.infolist()}
        ib = {i.filename: i for i in b.infolist()}
        assert len(ia) == len(a.infolist()) and ia.keys() == ib.keys(), sorted(set(ia) ^ set(ib))
        for name in ia:
            assert a.read(name) == b.read(name), f"{mine}: member {name} differs"
            for field in ENTRY_FIELDS:
                assert getattr(ia[name], field) == getattr(ib[name], field), (name, field)


def test_identical_to_files_written_by_xarray_with_zarr_2_18(tmp_path):
    """Against the committed files xarray + zarr-python 2.18 wrote (tests/data/make_reference.py), under
    whichever zarr-python is installed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_reference", os.path.join(os.path.dirname(__file__), "data",
                                                                                "make_reference.py"))
    make_reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_reference)
    for mod, ds in make_reference.reference_chunk().items():
        mine = write_chunk(ds, tmp_path / f"mine_{mod}.zarr.zip", size=24)
        assert_same_archive(mine, os.path.join(os.path.dirname(__file__), "data", f"zarr218_{mod}.zarr.zip"))


@pytest.mark.skipif(ZARR3, reason="writes with zarr-python 2.18 itself, which is not installed")
def test_identical_to_what_xarray_with_zarr_2_18_writes_now(chunk, tmp_path):
    import zarr

    for mod, ds in chunk.items():
        mine = write_chunk(ds, tmp_path / f"mine_{mod}.zarr.zip", size=24)
        ref = str(tmp_path / f"ref_{mod}.zarr.zip")
        store = zarr.ZipStore(ref, mode="w")
        ds.chunk({"time": 1}).to_zarr(store, consolidated=True)
        store.close()
        assert_same_archive(mine, ref)


def test_custom_compressor_round_trips(chunk, tmp_path):
    path = write_chunk(chunk["S2L2A"], tmp_path / "z.zarr.zip", size=24,
                       compressor={"id": "zstd", "level": 3})
    ds = xr_open_zarr(path)
    np.testing.assert_array_equal(ds["bands"].values, chunk["S2L2A"]["bands"].values)


def test_dask_backed_input_is_written_chunk_by_chunk(chunk, tmp_path):
    lazy = chunk["S2L1C"].chunk({"time": 1})
    path = write_chunk(lazy, tmp_path / "lazy.zarr.zip", size=24)
    xr.testing.assert_identical(xr_open_zarr(path).load(), chunk["S2L1C"])


def _bad(chunk, **changes):
    ds = chunk["S2L2A"].copy()
    for key, value in changes.items():
        ds[key] = value
    return ds


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda c: c["S2L2A"].assign(bands=c["S2L2A"]["bands"].astype("int32")), "int32, expected int16"),
        (lambda c: c["S2L2A"].assign_coords(band=[f"X{i}" for i in range(12)]), "match no modality"),
        (lambda c: c["S2L2A"].isel(time=[0, 1, 2]), "3 timestamps, expected 4"),
        (lambda c: c["S2L2A"].drop_vars("cloud_mask"), "needs 'cloud_mask'"),
        (lambda c: c["S2L2A"].drop_vars("crs"), "'crs' is missing"),
        (lambda c: c["S2L2A"].assign_coords(sample=["1", "2", "3", "4", "5"]), "7 digits"),
        (lambda c: xr.concat([c["S2L2A"]] * 13, "sample"), "65 samples"),
    ],
)
def test_bad_input_is_refused_with_a_message(chunk, tmp_path, make, message):
    target = tmp_path / "bad.zarr.zip"
    with pytest.raises(SchemaError, match=message) as info:
        write_chunk(make(chunk), target, size=24)
    assert str(target) in str(info.value)
    assert not target.exists()


def test_wrong_patch_size_is_refused(chunk, tmp_path):
    with pytest.raises(SchemaError, match="24 x 24 px, expected 264 x 264"):
        write_chunk(chunk["S1GRD"], tmp_path / "s.zarr.zip")


def test_a_failed_write_leaves_neither_a_partial_file_nor_temp_files(chunk, tmp_path):
    good = chunk["S2L2A"]
    target = tmp_path / "t.zarr.zip"
    write_chunk(good, target, size=24)
    before = target.read_bytes()

    def explode(block):
        raise RuntimeError("disk on fire")

    broken = good.copy()
    bands = da.from_array(good["bands"].values, chunks=(5, 1, 12, 24, 24)).map_blocks(explode, dtype="int16")
    broken["bands"] = (good["bands"].dims, bands)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_chunk(broken, target, size=24)
    assert target.read_bytes() == before, "the previous file must survive a failed rewrite"
    assert os.listdir(tmp_path) == ["t.zarr.zip"]


def test_overwrite_false_refuses_existing(chunk, tmp_path):
    target = tmp_path / "t.zarr.zip"
    write_chunk(chunk["S1GRD"], target, size=24)
    with pytest.raises(FileExistsError):
        write_chunk(chunk["S1GRD"], target, size=24, overwrite=False)
