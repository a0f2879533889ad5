import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from ssl4eo_zarr import schema
from ssl4eo_zarr.cli import main
from ssl4eo_zarr.validate import validate
from ssl4eo_zarr.views.chunkfiles import open_dataset
from ssl4eo_zarr.writer import encode_members, write_members

from .helpers import chunk_path


def _rewrite(path, ds):
    """Write ``ds`` to ``path`` without the writer's schema checks (to make deliberately broken files)."""
    write_members(path, encode_members(ds))


def _errors(report, path):
    return next(f for f in report.files if f.path == path).errors


def test_clean_dataset_passes(root):
    report = validate(root, size=32)
    assert report.ok, report.format()
    assert len(report.files) == 12


@pytest.mark.parametrize(
    "mod, change, expected",
    [
        ("S2L2A", lambda ds: ds.assign(bands=ds["bands"].astype("int32")), "int32, expected int16"),
        ("S2L1C", lambda ds: ds.assign_coords(band=list(schema.S2L1C.bands[::-1])), "differ from S2L1C"),
        ("S2L2A", lambda ds: ds.assign(cloud_mask=ds["cloud_mask"] + 5), "outside the classes 0..6"),
        ("S1GRD", lambda ds: ds.assign(bands=ds["bands"].where(ds["x"] > 3)), "NaN values"),
        ("S2L2A", lambda ds: ds.assign(sample_id=ds["sample_id"].copy(data=np.roll(ds["sample_id"].values, 1, 0))),
         "sample_id"),
        # Another location's product ids: no reordering of the timestamps reconciles them with time_.
        ("S1GRD", lambda ds: ds.assign(file_id=ds["file_id"].copy(data=np.roll(ds["file_id"].values, 1, 0))),
         "S1 file_id disagrees with time_"),
        ("S2RGB", lambda ds: ds.assign(time_=ds["time_"].copy(data=ds["time_"].values[:, ::-1])), "chronological"),
        ("S2L1C", lambda ds: ds.assign(bands=ds["bands"] * 0 + 20000), None),
    ],
)
def test_each_violation_is_reported(root_copy, mod, change, expected):
    path = chunk_path(root_copy, mod, 2)
    ds = open_dataset(path).load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _rewrite(path, change(ds))
    report = validate(root_copy, size=32)
    errors = _errors(report, path)
    if expected is None:  # out-of-range values are unusual but legal: a warning, not an error
        assert not errors
        assert any("outside the typical range" in w for w in next(f for f in report.files if f.path == path).warnings)
        return
    assert any(expected in e for e in errors), errors
    assert not report.ok


def test_wrong_chunking_and_missing_consolidated_metadata(root_copy):
    path = chunk_path(root_copy, "S2L2A", 1)
    members = [(n, b) for n, b in encode_members(open_dataset(path).load()) if n != ".zmetadata"]
    write_members(path, members)
    errors = _errors(validate(root_copy, size=32), path)
    assert any("consolidated metadata" in e for e in errors)


def test_duplicate_zip_entries_are_reported(root_copy):
    path = chunk_path(root_copy, "S2L1C", 1)
    with zipfile.ZipFile(path) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members + [("bands/0.0.0.0.0", members[-1][1])]:
                zf.writestr(name, data)
    errors = _errors(validate(root_copy, size=32), path)
    assert any("duplicate zip entries" in e for e in errors), errors


@pytest.mark.parametrize("damage", ["truncate", "random", "flip", "empty"])
def test_damaged_files_are_reported_by_name(root_copy, damage):
    path = chunk_path(root_copy, "S2L2A", 3)
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "random":
        data = bytearray(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif damage == "flip":
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("bands/0.1.0.0.0")
        start = info.header_offset + 30 + len(info.filename) + 100
        data[start: start + 8] = bytes(b ^ 0xFF for b in data[start: start + 8])
    else:
        data = bytearray()
    open(path, "wb").write(bytes(data))
    report = validate(root_copy, size=32)
    errors = _errors(report, path)
    assert errors and all(path in e or "member" in e or "zip" in e for e in errors), errors
    if damage == "flip":
        assert any("CRC" in e or "decode" in e for e in errors), errors
    others = [f for f in report.files if f.path != path]
    assert all(f.ok for f in others if f.path.endswith(("_000001.zarr.zip", "_000002.zarr.zip")))


def test_missing_modality_file(root_copy):
    os.remove(chunk_path(root_copy, "S2RGB", 2))
    report = validate(root_copy, size=32)
    assert any("missing" in e for e in _errors(report, chunk_path(root_copy, "S2RGB", 2)))


def test_cli_validate_exit_codes(root, root_copy, capsys):
    assert main(["validate", root, "--size", "32"]) == 0
    assert "12 files checked, 0 with errors" in capsys.readouterr().out
    open(chunk_path(root_copy, "S1GRD", 1), "wb").write(b"not a zip")
    assert main(["validate", root_copy, "--size", "32"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and chunk_path(root_copy, "S1GRD", 1) in out


def test_cli_entry_point_runs_as_a_program(root):
    out = subprocess.run([sys.executable, "-m", "ssl4eo_zarr.cli", "info", root], capture_output=True, text=True,
                         check=True).stdout
    assert "files: 3" in out and "locations: 42" in out


def test_files_chunked_over_all_timestamps_are_reported(root_copy, tmp_path):
    from .helpers import ZARR3

    path = chunk_path(root_copy, "S2L2A", 2)
    ds = open_dataset(path).load()
    # Written by xarray + the installed zarr into a folder, then zipped: another tool's file.
    folder = tmp_path / "other.zarr"
    kwargs = {"zarr_format": 2} if ZARR3 else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.chunk({"time": 4}).to_zarr(str(folder), consolidated=True, **kwargs)
    with zipfile.ZipFile(path, "w") as zf:
        for dirpath, _, files in os.walk(folder):
            for name in files:
                full = os.path.join(dirpath, name)
                zf.write(full, os.path.relpath(full, folder))
    errors = _errors(validate(root_copy, size=32), path)
    assert any("one chunk per timestamp" in e for e in errors), errors


def test_validate_on_a_dask_cluster_gives_the_same_report(root_copy, tmp_path):
    """Files checked by a LocalCluster's 2 worker processes: the same report, errors named by file."""
    distributed = pytest.importorskip("distributed")
    from ssl4eo_zarr import synthetic

    path = chunk_path(root_copy, "S2L2A", 2)
    with open(path, "r+b") as f:  # damage one file
        f.seek(200)
        f.write(b"\0" * 64)
    shards = str(tmp_path / "shards")
    synthetic.make_shards(shards, 24, per_shard=8, size=16, seed=4, modalities=("S2L2A", "S1GRD"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        for source, size in ((root_copy, 32), (shards, 16)):
            here = validate(source, size=size)
            there = validate(source, size=size, client=client)
            assert [(f.path, f.errors, f.warnings) for f in there.files] == \
                   [(f.path, f.errors, f.warnings) for f in here.files]
        cluster_report = validate(root_copy, size=32, client=cluster.scheduler_address)
        assert not cluster_report.ok and any(f.path == path and f.errors for f in cluster_report.files)
