"""Files from before the 2026-02-19 S1 fix: detected, delivered chronologically, validated, repaired; and the
permissions of every file the library writes."""

import os
import shutil
import warnings

import numpy as np
import pytest
import xarray as xr
from torch.utils.data import DataLoader

import ssl4eo_zarr as sz
from ssl4eo_zarr import s1order, schema, synthetic
from ssl4eo_zarr.cli import main
from ssl4eo_zarr.errors import S1OrderWarning
from ssl4eo_zarr.repair import repair_s1_order
from ssl4eo_zarr.storage import zarr_store
from ssl4eo_zarr.validate import validate

from .helpers import ZARR3, chunk_path, xr_open_zarr

SIZE = 16


def test_pure_order_functions():
    ids = np.array([["S1A_IW_GRDH_1SDV_20210320T100000_x", "S1B_IW_GRDH_1SDV_20210310T100000_x"],
                    ["S1B_IW_GRDH_1SDV_20210101T000000_x", "S1A_IW_GRDH_1SDV_20210201T000000_x"]])
    times = np.array([["2021-03-10T10:00:00", "2021-03-20T10:00:00"],
                      ["2021-01-01T00:00:00", "2021-02-01T00:00:00"]], dtype="datetime64[ns]")
    perm = s1order.chronological_order(ids, times)
    assert perm.tolist() == [[1, 0], [0, 1]]
    assert s1order.misordered_rows(perm).tolist() == [0]
    assert s1order.reorder(ids, perm)[0].tolist() == [ids[0, 1], ids[0, 0]]
    # In order already, or ids that no reordering reconciles: nothing to do.
    assert s1order.chronological_order(s1order.reorder(ids, perm), times) is None
    assert s1order.chronological_order(np.array([["x", "y"]]), times[:1]) is None
    far = times.copy()
    far[0, 0] += np.timedelta64(3, "D")
    assert s1order.chronological_order(ids, far) is None
    assert s1order.plan_order(ids, far)[1].tolist() == [0]


def test_each_location_is_fixed_on_its_own():
    """One location that cannot be reconciled no longer holds back the others: it is left as stored and named."""
    ids = np.array([["S1A_IW_GRDH_1SDV_20210320T100000_x", "S1B_IW_GRDH_1SDV_20210310T100000_x"],  # fixable
                    ["S1A_IW_GRDH_1SDV_20210120T000000_x", "S1B_IW_GRDH_1SDV_20210101T000000_x"],  # ids far off
                    ["S1B_IW_GRDH_1SDV_20210101T000000_x", "S1A_IW_GRDH_1SDV_20210201T000000_x"],  # in order
                    ["not a product id", "S1A_IW_GRDH_1SDV_20210201T000000_x"]])                   # unparsable
    times = np.array([["2021-03-10T10:00:00", "2021-03-20T10:00:00"], ["2021-02-01", "2021-03-01"],
                      ["2021-01-01", "2021-02-01"], ["2021-01-01", "2021-02-01"]], dtype="datetime64[ns]")
    perm, left = s1order.plan_order(ids, times)
    assert perm.tolist() == [[1, 0], [0, 1], [0, 1], [0, 1]]
    assert left.tolist() == [1, 3]
    assert s1order.misordered_rows(perm).tolist() == [0]
    only_bad = s1order.plan_order(ids[1:2], times[1:2])
    assert only_bad[0] is None and only_bad[1].tolist() == [0]


def _write(ds, path):
    """As the published tools wrote it: xarray + zarr-python 2.18 where installed, else this library's writer
    (byte-identical to it, tests/test_writer.py)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if ZARR3:
        sz.write_chunk(ds, path, modality="S1GRD", size=SIZE)
    else:
        store = zarr_store(path, mode="w")
        ds.chunk({"time": 1}).to_zarr(store, consolidated=True)
        store.close()


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    """A 2-file val root whose first S1 file has the pre-fix order; returns (root, chronological S1 chunk)."""
    root = str(tmp_path_factory.mktemp("prefix") / "root")
    synthetic.make_dataset(root, n_files=2, samples=12, size=SIZE, seed=5, split="val",
                           modalities=("S1GRD", "S2L2A"))
    path = chunk_path(root, "S1GRD", 1)
    good = sz.open_dataset(path).load()
    bad = synthetic.pre_fix_s1_order(good)
    assert len(s1order.misordered_rows(s1order.chronological_order(bad["file_id"].values, bad["time_"].values))) > 2
    os.remove(path)
    _write(bad, path)
    return root, good


def _s1_warnings(record):
    return [w for w in record if issubclass(w.category, S1OrderWarning)]


def test_open_dataset_delivers_chronological_s1_and_warns_once(prefix):
    root, good = prefix
    path = chunk_path(root, "S1GRD", 1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = sz.open_dataset(path)
        again = sz.open_dataset(path)
    assert len(_s1_warnings(record)) == 1 and path in str(_s1_warnings(record)[0].message)
    assert "ssl4eo-zarr repair" in str(_s1_warnings(record)[0].message)
    np.testing.assert_array_equal(ds["bands"].values, good["bands"].values)
    np.testing.assert_array_equal(again["bands"].isel(time=2).values, good["bands"].isel(time=2).values)
    assert (ds["file_id"].values == good["file_id"].values).all()
    np.testing.assert_array_equal(ds["time_"].values, good["time_"].values)
    stored = sz.open_dataset(path, fix_s1_order=False)
    assert not np.array_equal(stored["bands"].values, good["bands"].values)
    xr.testing.assert_identical(stored.load(), xr_open_zarr(path).load())


def test_multimodal_view_pairs_s1_with_s2_seasons(prefix):
    root, good = prefix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S1OrderWarning)
        ds = sz.open_dataset(root, split="val")
    n = good.sizes["sample"]
    np.testing.assert_array_equal(ds["S1GRD"].values[:n], good["bands"].values)
    assert (ds["file_id_S1GRD"].values[:n] == good["file_id"].values).all()
    other = sz.open_dataset(chunk_path(root, "S1GRD", 2))
    np.testing.assert_array_equal(ds["S1GRD"].values[n:], other["bands"].values)


@pytest.mark.parametrize("timestamps", ["all", 1, [3, 0], "random"])
def test_loader_delivers_chronological_s1(prefix, timestamps):
    root, good = prefix
    index = {str(s): i for i, s in enumerate(good["sample"].values)}
    ds = sz.ChunkDataset(root, split="val", modalities=["S1GRD"], timestamps=timestamps, return_metadata=True,
                         shuffle=False)
    seen = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S1OrderWarning)
        batches = list(DataLoader(ds, batch_size=None, num_workers=2))
    for batch in batches:
        for j, sample in enumerate(batch["sample"]):
            if sample not in index:
                continue
            want = good["bands"].values[index[sample]]
            if timestamps == "random":
                want = want[int(batch["timestamp"][j])]
            elif timestamps != "all":
                want = want[timestamps]
            np.testing.assert_array_equal(batch["S1GRD"][j].numpy(), want)
            seen += 1
    assert seen == good.sizes["sample"]
    stored = sz.ChunkDataset(root, split="val", modalities=["S1GRD"], shuffle=False, fix_s1_order=False)
    first = next(iter(stored))
    assert not np.array_equal(first["S1GRD"].numpy(), good["bands"].values)


def test_validate_warns_and_passes(prefix, capsys):
    root, _ = prefix
    report = validate(root, size=SIZE)
    assert report.ok, report.format()
    s1 = next(f for f in report.files if f.path == chunk_path(root, "S1GRD", 1))
    assert any("2026-02-19" in w and "ssl4eo-zarr repair" in w for w in s1.warnings)
    assert main(["validate", root, "--size", str(SIZE)]) == 0
    assert "warning:" in capsys.readouterr().out


def test_repair_in_place_and_to_a_folder(prefix, tmp_path, capsys):
    root, good = prefix
    work = str(tmp_path / "root")
    shutil.copytree(root, work)
    bad = chunk_path(work, "S1GRD", 1)
    fine = chunk_path(work, "S1GRD", 2)
    before = open(fine, "rb").read()
    os.chmod(bad, 0o664)
    assert main(["repair", os.path.join(work, "val"), "--out", str(tmp_path / "fixed")]) == 0
    assert "1 of 2 files repaired" in capsys.readouterr().out
    copy = tmp_path / "fixed" / "S1GRD" / os.path.basename(bad)
    np.testing.assert_array_equal(xr_open_zarr(str(copy))["bands"].values, good["bands"].values)
    result = repair_s1_order(bad)
    assert result.moved > 0 and result.target == bad
    assert repair_s1_order(fine).moved == 0
    assert open(fine, "rb").read() == before  # untouched, byte for byte
    assert os.stat(bad).st_mode & 0o777 == 0o664  # a rewritten file keeps its mode
    # What any reader sees now, zarr 2.18 + xarray included: chronological S1, file_id with it.
    plain = xr_open_zarr(bad)
    np.testing.assert_array_equal(plain["bands"].values, good["bands"].values)
    assert (plain["file_id"].values == good["file_id"].values).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", S1OrderWarning)
        sz.open_dataset(bad)
    assert not any("2026-02-19" in w for f in validate(bad, size=SIZE).files for w in f.warnings)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        root = str(tmp_path / "root")
        synthetic.make_dataset(root, n_files=1, samples=2, size=8, seed=1, split="val", modalities=("S2RGB",))
        path = chunk_path(root, "S2RGB", 1)
        listing = os.path.join(root, schema.split_list_name("val"))
        for p in (path, listing):
            assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask, p
        os.chmod(path, 0o600)
        sz.write_chunk(sz.open_dataset(path).load(), path, size=8)
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def _unreconcilable(bad: xr.Dataset, row: int) -> xr.Dataset:
    """``bad`` with location ``row``'s first product id moved 5 days away from every ``time_``."""
    out = bad.copy(deep=True)
    ids = out["file_id"].values.astype(object)
    text = str(ids[row, 0])
    day = int(text[23:25])
    ids[row, 0] = text[:23] + f"{(day + 5) % 28 + 1:02d}" + text[25:]
    out["file_id"] = (("sample", "time"), ids.astype(str))
    return out


@pytest.fixture(scope="module")
def partly(tmp_path_factory, prefix):
    """A pre-fix S1 file in which location 3 cannot be reconciled; returns (root, good, bad as stored)."""
    src, good = prefix
    root = str(tmp_path_factory.mktemp("partly") / "root")
    shutil.copytree(src, root)
    path = chunk_path(root, "S1GRD", 1)
    bad = _unreconcilable(synthetic.pre_fix_s1_order(good), 3)
    assert (bad["bands"].values[3] != good["bands"].values[3]).any(), "location 3 is misordered too"
    os.remove(path)
    _write(bad, path)
    return root, good, bad


def _expected(good, bad, left=(3,)):
    want = good["bands"].values.copy()
    for row in left:
        want[row] = bad["bands"].values[row]
    return want


def test_readers_fix_every_location_but_the_one_that_cannot_be_reconciled(partly):
    root, good, bad = partly
    path = chunk_path(root, "S1GRD", 1)
    sample = str(good["sample"].values[3])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = sz.open_dataset(path, use_index=False)
    messages = [str(w.message) for w in _s1_warnings(record)]
    assert len(messages) == 1 and sample in messages[0] and "as stored" in messages[0], messages
    np.testing.assert_array_equal(ds["bands"].values, _expected(good, bad))
    view = sz.open_dataset(root, split="val", modalities=["S1GRD"], use_index=False)
    np.testing.assert_array_equal(view["S1GRD"].values[:12], _expected(good, bad))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S1OrderWarning)
        loader = sz.ChunkDataset(root, split="val", modalities=["S1GRD"], shuffle=False, return_metadata=True)
        got = {s: b["S1GRD"][k].numpy() for b in DataLoader(loader, batch_size=None, num_workers=1)
               for k, s in enumerate(b["sample"])}
    want = _expected(good, bad)
    for k, s in enumerate(good["sample"].values):
        np.testing.assert_array_equal(got[str(s)], want[k])


def test_repair_fixes_the_rest_and_names_the_location_left(partly, tmp_path):
    root, good, bad = partly
    out = str(tmp_path / "fixed.zarr.zip")
    with pytest.warns(S1OrderWarning, match=str(good["sample"].values[3])):
        result = repair_s1_order(chunk_path(root, "S1GRD", 1), out)
    assert result.left == (str(good["sample"].values[3]),) and result.moved >= 2
    np.testing.assert_array_equal(xr_open_zarr(out)["bands"].values, _expected(good, bad))


def test_repair_writes_chunks_the_source_left_out(prefix, tmp_path):
    """A chunk absent from the source (all fill value, as zarr may skip it) that reordering fills is written."""
    import zipfile

    root, good = prefix
    src = chunk_path(root, "S1GRD", 1)
    holey = str(tmp_path / "holey.zarr.zip")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(holey, "w") as zout:
        for info in zin.infolist():
            if info.filename != "bands/0.1.0.0.0":
                zout.writestr(info, zin.read(info.filename))
    stored = xr_open_zarr(holey)
    assert np.isnan(stored["bands"].values[:, 1].astype(np.float32)).all(), "timestamp 1 reads as fill value"
    perm = s1order.chronological_order(stored["file_id"].values, stored["time_"].values)
    want = s1order.reorder(stored["bands"].values, perm)
    out = str(tmp_path / "repaired.zarr.zip")
    repair_s1_order(holey, out)
    assert "bands/0.1.0.0.0" in zipfile.ZipFile(out).namelist()
    np.testing.assert_array_equal(xr_open_zarr(out)["bands"].values, want)
    assert not np.isnan(want[:, 1].astype(np.float32)).all(), "reordering moved data into timestamp 1"


def test_reordering_holds_when_a_file_spans_several_dask_chunks(prefix, tmp_path):
    """A file written with 4 locations per stored chunk: each dask block gets its own rows of the order."""
    root, good = prefix
    bad = synthetic.pre_fix_s1_order(good).drop_encoding()
    folder, path = str(tmp_path / "small_chunks.zarr"), str(tmp_path / "small_chunks.zarr.zip")
    kw = {"zarr_format": 2} if ZARR3 else {}  # a folder, then zipped: zarr 3's ZipStore duplicates rewritten keys
    bad.to_zarr(folder, consolidated=True, encoding={"bands": {"chunks": (4, 1, 2, SIZE, SIZE)}}, **kw)
    shutil.make_archive(path[: -len(".zip")], "zip", folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", S1OrderWarning)
        ds = sz.open_dataset(path)
    assert len(ds["bands"].chunks[0]) == 3
    np.testing.assert_array_equal(ds["bands"].values, good["bands"].values)
    assert (ds["file_id"].values == good["file_id"].values).all()


@pytest.mark.parametrize("fix", [True, False])
def test_converters_and_iter_shard_follow_one_rule(partly, tmp_path, fix, monkeypatch):
    """chunks -> shards, iter_shard and shards -> chunks all fix S1 per location (or all keep it as stored)."""
    from ssl4eo_zarr import chunkfile, convert

    monkeypatch.setattr(chunkfile, "_WARNED", set())  # once per file and process: earlier tests warned already
    root, good, bad = partly
    shards = str(tmp_path / "shards")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        convert.chunks_to_shards(root, shards, split="val", modalities=["S1GRD"], per_shard=8, fix_s1_order=fix)
    assert bool(_s1_warnings(record)) == fix
    want = _expected(good, bad) if fix else bad["bands"].values
    members = [ds for p in sorted(os.listdir(os.path.join(shards, "val", "S1GRD")))
               for ds in convert.iter_shard(os.path.join(shards, "val", "S1GRD", p), fix_s1_order=fix)]
    for k in range(12):
        np.testing.assert_array_equal(members[k]["bands"].values, want[k])
    back = str(tmp_path / "back")
    convert.shards_to_chunks(shards, back, split="val", modalities=["S1GRD"], fix_s1_order=fix)
    np.testing.assert_array_equal(xr_open_zarr(chunk_path(back, "S1GRD", 1))["bands"].values[:12], want[:12])
    if not fix:  # the stored order went through unchanged: iter_shard with the fix now reorders the same way
        fixed = [ds for p in sorted(os.listdir(os.path.join(shards, "val", "S1GRD")))
                 for ds in convert.iter_shard(os.path.join(shards, "val", "S1GRD", p))]
        for k in range(12):
            np.testing.assert_array_equal(fixed[k]["bands"].values, _expected(good, bad)[k])


def test_validate_names_the_location_no_reordering_reconciles_beside_fixable_ones(partly, tmp_path):
    """The reader's warning sends users to validate: it names the irreconcilable location (an error) beside the
    fixable ones (a warning), and an id that carries no time does not switch the order check off."""
    from ssl4eo_zarr.validate import validate_file

    root, good, bad = partly
    path = chunk_path(root, "S1GRD", 1)
    report = validate_file(path, size=int(good.sizes["x"]))
    sample = str(good["sample"].values[3])
    assert any("no reordering" in e and sample in e for e in report.errors), report.errors
    assert any(s1order_note() in w for w in report.warnings), report.warnings
    odd = bad.copy(deep=True)
    ids = odd["file_id"].values.astype(object)
    ids[5, 2] = "not-a-product-id"
    odd["file_id"] = (("sample", "time"), ids.astype(str))
    other = str(tmp_path / "odd.zarr.zip")
    _write(odd, other)
    report = validate_file(other, size=int(good.sizes["x"]))
    assert any("product-id pattern" in w for w in report.warnings), report.warnings
    assert any("no reordering" in e and sample in e for e in report.errors), report.errors


def s1order_note() -> str:
    from ssl4eo_zarr import s1order

    return s1order.FIX_NOTE
