"""The WebDataset distribution: seven modalities, one loader for both distributions, streaming, the xarray view,
static hosts, brace patterns, conversion and validation."""

import os
import shutil
import tarfile
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

import ssl4eo_zarr as sz
from ssl4eo_zarr import ModalityMismatchError, convert, schema, synthetic
from ssl4eo_zarr.layout import count_by_probing, expand_braces, resolve
from ssl4eo_zarr.shardfile import scan_shard, shard_index
from ssl4eo_zarr.testing import RangeHTTPServer

N, SIZE, SEED = 40, 32, 4
TRAIN = ("S2L1C", "S2L2A", "S1GRD")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same 40 locations as chunk files (one file) and as 7-modality shards (16 + 16 + 8)."""
    base = tmp_path_factory.mktemp("both")
    chunks, shards = str(base / "chunks"), str(base / "shards")
    synthetic.make_dataset(chunks, n_files=1, samples=N, size=SIZE, seed=SEED, split="val")
    synthetic.make_shards(shards, N, per_shard=16, size=SIZE, seed=SEED, split="val")
    return chunks, shards


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """37 locations in 5 shards (8 each, the last 5), three modalities."""
    path = str(tmp_path_factory.mktemp("odd") / "shards")
    synthetic.make_shards(path, 37, per_shard=8, size=16, seed=9, split="train", modalities=TRAIN)
    return path


def _run(ds, workers=2):
    return list(DataLoader(ds, batch_size=None, num_workers=workers))


def _by_sample(batches, key):
    return {s: b[key][j] for b in batches for j, s in enumerate(b["sample"])}


def test_published_numbering_and_layout(both):
    _, shards = both
    names = sorted(os.listdir(os.path.join(shards, "val", "S2L2A")))
    assert names == [schema.shard_name(i) for i in (1, 2, 3)]
    members = scan_shard(os.path.join(shards, "val", "DEM", names[0]))
    assert len(members) == 16 and all(m.name == m.key + ".zarr.zip" and len(m.key) == 7 for m in members)
    sets = resolve(shards, split="val")
    assert {cs.kind for cs in sets} == {"shards"} and list(sets[0].paths) == list(schema.SHARD_MODALITIES)


def test_the_xarray_views_of_both_distributions_agree(both):
    chunks, shards = both
    a = sz.open_dataset(chunks, split="val")
    b = sz.open_dataset(shards, split="val")
    assert b.attrs["distribution"] == "shards"
    assert list(a["sample"].values) == list(b["sample"].values)
    for name in ("S2L1C", "S2L2A", "S1GRD", "S2RGB", "cloud_mask", "center_lat", "center_lon", "crs", "x_", "y_",
                 "time_S2L2A", "time_S1GRD", "file_id_S1GRD", "sample_id"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert b["DEM"].dims == ("sample", "band_DEM", "y", "x") and b["DEM"].dtype == np.float32
    assert b["NDVI"].dims == ("sample", "time", "band_NDVI", "y", "x")
    off_a = sz.open_dataset(chunks, split="val", s2_offset=False)
    off_b = sz.open_dataset(shards, split="val", s2_offset=False, modalities=["S2L2A"])
    np.testing.assert_array_equal(off_a["S2L2A"].values, off_b["S2L2A"].values)
    np.testing.assert_array_equal(off_a["S2L2A"].values, a["S2L2A"].values - 1000)


@pytest.mark.parametrize("s2_offset", [True, False])
@pytest.mark.parametrize("timestamps", ["all", 2, [3, 1]])
def test_the_loader_gives_identical_tensors_from_both(both, s2_offset, timestamps):
    chunks, shards = both
    kw = {"split": "val", "batch_size": 8, "timestamps": timestamps, "return_metadata": True, "s2_offset": s2_offset,
          "modalities": TRAIN}
    a = _run(sz.ChunkDataset(chunks, **kw))
    b = _run(sz.ChunkDataset(shards, **kw))
    assert len(a) == len(b) == 5
    assert set(b[0]) == set(a[0])
    for key in (*TRAIN, "cloud_mask", "center_lat", "crs", "time_", "time_S1GRD"):
        got, want = _by_sample(b, key), _by_sample(a, key)
        assert set(got) == set(want)
        for s in want:
            assert got[s].dtype == want[s].dtype and torch.equal(got[s], want[s]), (key, s)
    if not s2_offset:
        assert int(b[0]["S2L2A"].min()) < 1000 or int(b[0]["S2L2A"].float().mean()) < 3000


def test_seven_modalities_random_season_and_dem_shapes(both):
    _, shards = both
    ds = sz.ChunkDataset(shards, split="val", modalities=list(schema.SHARD_MODALITIES), timestamps="random", batch_size=8,
                         return_metadata=True, seed=3)
    batches = _run(ds)
    first = batches[0]
    assert first["DEM"].shape == (8, 1, SIZE, SIZE)  # one timestamp asked for: no time axis, DEM included
    assert first["S2L1C"].shape == (8, 13, SIZE, SIZE) and first["NDVI"].shape == (8, 1, SIZE, SIZE)
    assert first["time_DEM"].shape == (8,) and first["time_"].shape == (8,)
    assert first["LULC"].dtype == torch.uint8 and first["cloud_mask"].shape == (8, SIZE, SIZE)
    full = sz.open_dataset(shards, split="val").compute()  # read once, not once per lookup
    index = {s: i for i, s in enumerate(full["sample"].values)}
    for b in batches:
        for j, s in enumerate(b["sample"]):
            t = int(b["timestamp"][j])
            # The same season in every time-series modality, its own times with it.
            for mod in ("S2L2A", "S1GRD", "NDVI"):
                np.testing.assert_array_equal(b[mod][j].numpy(), full[mod].values[index[s], t])
            assert int(b["time_"][j]) == full["time_S2L2A"].values[index[s], t].astype(np.int64)
            np.testing.assert_array_equal(b["DEM"][j].numpy(), full["DEM"].values[index[s]])


@pytest.mark.parametrize("drop_last", [False, True])
def test_exactly_once_over_two_ranks_and_two_workers(odd, drop_last):
    per_rank = []
    for rank in range(2):
        ds = sz.ChunkDataset(odd, split="train", rank=rank, world_size=2, batch_size=3, timestamps=0, seed=5,
                             drop_last=drop_last, return_metadata=True, num_workers=2, shuffle_buffer=6)
        batches = _run(ds)
        assert len(batches) == len(ds)
        per_rank.append(batches)
    assert len(per_rank[0]) == len(per_rank[1]), "DDP needs the same number of batches on every rank"
    seen = Counter(s for batches in per_rank for b in batches for s in b["sample"])
    ids = {m.key for n in sorted(os.listdir(os.path.join(odd, "train", "S2L2A")))
           for m in scan_shard(os.path.join(odd, "train", "S2L2A", n))}
    assert len(ids) == 37
    if drop_last:
        assert max(seen.values()) == 1 and set(seen) <= ids
    else:
        assert set(seen) == ids
        assert sum(c - 1 for c in seen.values()) <= 2 * 8 + 2 * 3, "padding repeats at most one shard per rank"


def test_shuffle_is_seeded_and_changes_per_epoch(odd):
    def order(epoch, seed=1):
        ds = sz.ChunkDataset(odd, split="train", batch_size=4, timestamps=1, seed=seed, return_metadata=True)
        ds.set_epoch(epoch)
        return [tuple(b["sample"]) for b in _run(ds)]

    first = order(0)
    assert order(0) == first and order(1) != first and order(0, seed=2) != first
    assert sorted(s for b in order(1) for s in b) == sorted(s for b in first for s in b)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_epoch_exactly(odd, workers):
    kw = {"split": "train", "batch_size": 4, "timestamps": 1, "seed": 7, "return_metadata": True, "shuffle_buffer": 5}
    full = _run(sz.ChunkDataset(odd, **kw), workers)
    resumed = sz.ChunkDataset(odd, **kw)
    if workers == 0:
        it = iter(resumed)
        for _ in range(3):
            next(it)
        state = resumed.state_dict()
    else:
        state = resumed.state_dict(batches=3)
    again = sz.ChunkDataset(odd, **kw)
    again.load_state_dict(state)
    rest = _run(again, workers)
    assert [b["sample"] for b in rest] == [b["sample"] for b in full[3:]]
    assert torch.equal(rest[0]["S2L2A"], full[3]["S2L2A"])


def test_memory_is_bounded_by_the_shuffle_buffer(odd):
    from ssl4eo_zarr.loader.shard_reader import ShardReader

    ds = sz.ChunkDataset(odd, split="train", batch_size=2, timestamps=0, shuffle_buffer=4, seed=2)
    plan = ds._plan(1)[0]
    reader = ShardReader(ds._spec(), plan, shared=False)
    peak = 0
    for batch in plan:
        reader.batch(batch)
        peak = max(peak, len(reader.held))
    reader.close()
    assert 0 < peak <= 4 + 2


def _rewrite_shard(path, change):
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    from ssl4eo_zarr.shardfile import write_shard

    write_shard(path, change(members))


def test_diverging_keys_name_both_shards_and_keys(both, tmp_path):
    _, shards = both
    work = str(tmp_path / "shards")
    shutil.copytree(shards, work)
    bad = os.path.join(work, "val", "S1GRD", schema.shard_name(2))
    _rewrite_shard(bad, lambda ms: [ms[1], ms[0], *ms[2:]])
    good = os.path.join(work, "val", "S2L1C", schema.shard_name(2))
    with pytest.raises(ModalityMismatchError) as err:
        _run(sz.ChunkDataset(work, split="val", batch_size=8, shuffle=False), 0)
    message = str(err.value)
    assert bad in message and good in message
    first, second = (m.key for m in scan_shard(good)[:2])
    assert repr(first) in message and repr(second) in message
    with pytest.raises(ModalityMismatchError, match="diverge"):
        sz.open_dataset(work, split="val")


def test_a_modality_the_schema_does_not_know_still_reads(both, tmp_path):
    _, shards = both
    work = str(tmp_path / "shards")
    shutil.copytree(os.path.join(shards, "val", "S1GRD"), os.path.join(work, "val", "SAR9"))
    shutil.copytree(os.path.join(shards, "val", "S2L2A"), os.path.join(work, "val", "S2L2A"))
    ds = sz.ChunkDataset(work, split="val", modalities=["S2L2A", "SAR9"], batch_size=8, timestamps=[0, 2])
    batch = next(iter(ds))
    assert batch["SAR9"].shape == (8, 2, 2, SIZE, SIZE) and batch["SAR9"].dtype == torch.float16
    view = sz.open_dataset(work, split="val")
    assert view["SAR9"].dims == ("sample", "time", "band_SAR9", "y", "x")
    assert list(view["band_SAR9"].values) == ["vv", "vh"]


@pytest.mark.parametrize("dtype", ["uint16", "int32", "int8"])
def test_a_member_dtype_beyond_the_published_six_is_delivered_as_stored(both, tmp_path, dtype):
    """A grown dataset's modality stored as uint16, int32, ...: batches and views hold its values bit for bit."""
    from ssl4eo_zarr.convert import member_bytes, member_dataset
    from ssl4eo_zarr.shardfile import write_shard

    _, shards = both
    work = tmp_path / "shards"
    shutil.copytree(os.path.join(shards, "val", "S2L2A"), work / "val" / "S2L2A")
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    want = {}
    for name in sorted(os.listdir(work / "val" / "S2L2A")):
        members = []
        for m in scan_shard(str(work / "val" / "S2L2A" / name)):
            bands = rng.integers(info.min, info.max, (1, 1, SIZE, SIZE), dtype=dtype, endpoint=True)
            want[m.key] = bands[0, 0]
            ds = member_dataset(bands, band_names=["lst"], times_ns=np.array([1_600_000_000_000_000_000]),
                                file_id=["x"], center_lat=0.0, center_lon=0.0, epsg=32631,
                                x=np.arange(SIZE) * 10.0, y=np.arange(SIZE) * -10.0)
            members.append((m.name, member_bytes(ds)))
        os.makedirs(work / "val" / "LST", exist_ok=True)
        write_shard(str(work / "val" / "LST" / name), members)
    ds = sz.ChunkDataset(str(work), split="val", modalities=["S2L2A", "LST"], batch_size=8, return_metadata=True)
    seen = 0
    for batch in _run(ds, 0):
        assert batch["LST"].dtype == getattr(torch, dtype)
        for j, key in enumerate(batch["sample"]):
            np.testing.assert_array_equal(batch["LST"][j].numpy().reshape(SIZE, SIZE), want[key])
            seen += 1
    assert seen == N
    view = sz.open_dataset(str(work), split="val", modalities=["LST"])
    assert view["LST"].dtype == np.dtype(dtype)
    key = str(view["sample"].values[0])
    np.testing.assert_array_equal(np.asarray(view["LST"].values[0]).reshape(SIZE, SIZE), want[key])


def test_brace_patterns_and_lists(both):
    _, shards = both
    assert expand_braces("a_{0001..0003}.tar") == ["a_0001.tar", "a_0002.tar", "a_0003.tar"]
    assert expand_braces("{x,y}/{1..2}") == ["x/1", "x/2", "y/1", "y/2"]
    pattern = os.path.join(shards, "val", "S2L2A", "ssl4eos12_shard_{000001..000003}.tar")
    ds = sz.ChunkDataset(pattern, modalities=["S2L2A", "S1GRD"], batch_size=10, timestamps=0)
    assert sum(b["S2L2A"].shape[0] for b in ds) == N
    assert sz.open_dataset(pattern)["S2L2A"].sizes["sample"] == N


def test_probing_finds_shard_counts():
    calls = []

    def present(i):
        calls.append(i)
        return i <= 477

    assert count_by_probing(present) == 477 and len(calls) < 25
    calls.clear()
    assert count_by_probing(present, guess=477) == 477 and len(calls) == 3
    assert count_by_probing(lambda i: False) == 0


def test_static_host_root_for_both_distributions(both):
    chunks, shards = both
    for root in (chunks, shards):
        with RangeHTTPServer(root) as server:
            import urllib.error
            import urllib.request

            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(server.url + "/val/")
            ds = sz.ChunkDataset(server.url, split="val", batch_size=10, timestamps=1, modalities=TRAIN,
                                 return_metadata=True)
            batches = _run(ds)
            assert sorted(s for b in batches for s in b["sample"]) == sorted(
                sz.open_dataset(root, split="val")["sample"].values)


def test_hub_resolve_urls_and_one_timestep_reads_only_its_bytes(both, tmp_path):
    _, shards = both
    hub = tmp_path / "hub"
    os.makedirs(hub / "datasets" / "org" / "SSL4EO-S12-v1.1" / "resolve")
    os.symlink(shards, hub / "datasets" / "org" / "SSL4EO-S12-v1.1" / "resolve" / "main")
    with RangeHTTPServer(str(hub)) as server:
        url = server.url + "/datasets/org/SSL4EO-S12-v1.1/resolve/main"
        ds = sz.open_dataset(url, split="val", modalities=["S2L2A"])
        local = sz.open_dataset(shards, split="val", modalities=["S2L2A"])
        assert list(ds["sample"].values) == list(local["sample"].values)
        server.reset_counts()
        got = ds["S2L2A"].isel(sample=20, time=2).values
        np.testing.assert_array_equal(got, local["S2L2A"].isel(sample=20, time=2).values)
        member = shard_index(os.path.join(shards, "val", "S2L2A", schema.shard_name(2)))[4]
        assert member.key == str(ds["sample"].values[20])
        from ssl4eo_zarr.shardfile import MemberArchive

        with MemberArchive(os.path.join(shards, "val", "S2L2A", schema.shard_name(2)), member) as archive:
            chunk = archive._entry("bands/2.0.0.0", 1 << 30).compress_size
        assert server.bytes_served < chunk + 40_000, "the member's directory and that chunk, not the shard"
        assert server.bytes_served < member.size


def test_hf_urls_read_through_this_librarys_path(both):
    """hf:// roots through open_dataset and ChunkDataset, against a local server that answers the Hub's API
    (repository info, tree listings, paths-info, resolve with Range): the same values as the local shards."""
    pytest.importorskip("huggingface_hub")
    from ssl4eo_zarr.testing import RangeHTTPServer

    _, shards = both
    with RangeHTTPServer(shards, hub_repo="org/SSL4EO-S12-v1.1") as hub:
        options = {"endpoint": hub.url, "token": False}
        url = "hf://datasets/org/SSL4EO-S12-v1.1"
        remote = sz.open_dataset(url, split="val", storage_options=options)
        local = sz.open_dataset(shards, split="val")
        assert remote.attrs["modalities"] == local.attrs["modalities"]
        np.testing.assert_array_equal(remote["S2L2A"].values, local["S2L2A"].values)
        np.testing.assert_array_equal(remote["DEM"].values, local["DEM"].values)
        kw = {"split": "val", "modalities": ["S2L2A", "S1GRD"], "batch_size": 8, "seed": 3, "return_metadata": True}
        got = list(DataLoader(sz.ChunkDataset(url, storage_options=options, **kw), batch_size=None, num_workers=2))
        want = list(DataLoader(sz.ChunkDataset(shards, **kw), batch_size=None, num_workers=2))
        assert [b["sample"] for b in got] == [b["sample"] for b in want]
        for a, b in zip(got, want):
            assert torch.equal(a["S2L2A"], b["S2L2A"]) and torch.equal(a["S1GRD"], b["S1GRD"])
        assert any("/resolve/" in path for _t, _m, path, _h in hub.seen), "the data came through resolve URLs"


def test_convert_keeps_seven_modalities_and_says_what_chunks_cannot_hold(both, tmp_path):
    _, shards = both
    with pytest.warns(UserWarning, match="DEM, NDVI, LULC left out"):
        names = convert.shards_to_chunks(shards, str(tmp_path / "chunks"), split="val")
    assert names == [schema.chunk_file_name("val", 1)]
    back = sz.open_dataset(str(tmp_path / "chunks"), split="val")
    view = sz.open_dataset(shards, split="val")
    np.testing.assert_array_equal(back["S2L1C"].values, view["S2L1C"].values)
    written = convert.chunks_to_shards(str(tmp_path / "chunks"), str(tmp_path / "again"), split="val", per_shard=16)
    assert [os.path.basename(p) for p in written["S1GRD"]] == [schema.shard_name(i) for i in (1, 2, 3)]
    for mod in ("S2L2A", "S1GRD"):
        for a, b in zip(written[mod], sorted(os.listdir(os.path.join(shards, "val", mod)))):
            with tarfile.open(a) as ta, tarfile.open(os.path.join(shards, "val", mod, b)) as tb:
                assert [(m.name, ta.extractfile(m).read()) for m in ta] == [(m.name, tb.extractfile(m).read())
                                                                            for m in tb], "identical members"


def test_validate_checks_shards(both, tmp_path, capsys):
    from ssl4eo_zarr.cli import main
    from ssl4eo_zarr.validate import validate

    _, shards = both
    report = validate(shards, split="val", size=SIZE)
    assert report.ok, report.format()
    assert len(report.files) == 3 * len(schema.SHARD_MODALITIES)
    work = str(tmp_path / "shards")
    shutil.copytree(shards, work)
    bad = os.path.join(work, "val", "S2L2A", schema.shard_name(3))
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    _rewrite_shard(os.path.join(work, "val", "NDVI", schema.shard_name(1)), lambda ms: ms[::-1])
    report = validate(work, split="val", size=SIZE)
    errors = {f.path: f.errors for f in report.files if f.errors}
    assert bad in errors and any("truncated" in e or "tar" in e for e in errors[bad])
    ndvi = os.path.join(work, "val", "NDVI", schema.shard_name(1))
    assert ndvi in errors and any("keys" in e for e in errors[ndvi])
    assert main(["validate", work, "--split", "val", "--size", str(SIZE)]) == 1
    assert bad in capsys.readouterr().out


def test_shard_index_cache_is_invalidated_when_a_file_changes(both, tmp_path, monkeypatch):
    _, shards = both
    monkeypatch.setenv("SSL4EO_ZARR_CACHE", str(tmp_path / "cache"))
    path = str(tmp_path / "one.tar")
    shutil.copy(os.path.join(shards, "val", "S2RGB", schema.shard_name(3)), path)
    first = shard_index(path)
    assert len(first) == 8 and os.listdir(tmp_path / "cache" / "shards")
    _rewrite_shard(path, lambda ms: ms[:3])
    assert len(shard_index(path)) == 3, "a replaced file is never read through a stale entry"
    for name in os.listdir(tmp_path / "cache" / "shards"):
        (tmp_path / "cache" / "shards" / name).write_text("{damaged")
    assert len(shard_index(path)) == 3


def test_pre_fix_s1_order_inside_shards_is_delivered_chronologically(both, tmp_path):
    chunks, _ = both
    good = sz.open_dataset(os.path.join(chunks, "val", "S1GRD", schema.chunk_file_name("val", 1))).load()
    bad = synthetic.pre_fix_s1_order(good)
    members = [(f"{bad['sample'].values[i]}.zarr.zip",
                convert.member_bytes(convert.location_dataset(bad, i, "S1GRD"))) for i in range(8)]
    from ssl4eo_zarr.shardfile import write_shard

    path = write_shard(str(tmp_path / "val" / "S1GRD" / schema.shard_name(1)), members)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = next(iter(sz.ChunkDataset(path, modalities=["S1GRD"], batch_size=8, shuffle=False)))
        view = sz.open_dataset(path)
    np.testing.assert_array_equal(batch["S1GRD"].numpy(), good["bands"].values[:8])
    np.testing.assert_array_equal(view["S1GRD"].values, good["bands"].values[:8])
    xr.testing.assert_equal(view["file_id_S1GRD"].reset_coords(drop=True).drop_vars(["sample"], errors="ignore"),
                            good["file_id"][:8].reset_coords(drop=True).drop_vars(["sample"], errors="ignore"))


def _reference_module():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "data", "make_shard_reference.py")
    spec = importlib.util.spec_from_file_location("make_shard_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shards_written_by_zarr218_read_identically():
    """Members written by xarray + zarr-python 2.18 itself (whole-array chunks, its own metadata)."""
    root = os.path.join(os.path.dirname(__file__), "data", "shards218")
    expected = _reference_module().reference_members()
    ds = sz.ChunkDataset(root, split="val", modalities=["S2L2A", "S1GRD", "DEM"], batch_size=3, shuffle=False,
                         return_metadata=True, s2_offset=False)
    batch = next(iter(ds))
    assert batch["sample"] == [k for k, _ in expected["S2L2A"]]
    for mod in ("S2L2A", "S1GRD", "DEM"):
        want = np.stack([m["bands"].values for _, m in expected[mod]])
        np.testing.assert_array_equal(batch[mod].numpy(), want, err_msg=mod)
    np.testing.assert_array_equal(batch["cloud_mask"].numpy(), np.stack([m["cloud_mask"].values
                                                                         for _, m in expected["S2L2A"]]))
    np.testing.assert_array_equal(batch["time_"].numpy(), np.stack([m["time"].values for _, m in expected["S2L2A"]]))
    view = sz.open_dataset(root, split="val", s2_offset=False)
    np.testing.assert_array_equal(view["S2L2A"].values, np.stack([m["bands"].values for _, m in expected["S2L2A"]]))
    np.testing.assert_array_equal(view["x_"].values, np.stack([m["x"].values for _, m in expected["S2L2A"]]))
    assert view["DEM"].dims == ("sample", "band_DEM", "y", "x")
    from ssl4eo_zarr.validate import validate

    report = validate(root, split="val", size=24)
    assert report.ok, report.format()


def test_our_shards_open_with_the_published_webdataset_loader(both):
    """The published loader: webdataset + fsspec's zip filesystem + zarr.open_consolidated per member."""
    import zarr

    if int(zarr.__version__.split(".")[0]) >= 3:
        pytest.skip("the published WebDataset loader needs zarr-python <= 2.18 (run by make test-zarr2)")
    wds = pytest.importorskip("webdataset")
    import io

    import fsspec

    def zarr_decoding(key, value):  # as the published loader decodes a member
        if key == "zarr.zip" or key.endswith(".zarr.zip"):
            mapper = fsspec.filesystem("zip", fo=io.BytesIO(value), block_size=None).get_mapper("")
            return zarr.open_consolidated(mapper, mode="r")["bands"][...]

    _, shards = both
    urls = os.path.join(shards, "val", "S2L2A", "ssl4eos12_shard_{000001..000003}.tar")
    pipeline = (wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode(zarr_decoding)
                .rename(image="zarr.zip").batched(8, partial=True))
    theirs = {k: img for b in pipeline for k, img in zip(b["__key__"], b["image"])}
    ours = _by_sample(_run(sz.ChunkDataset(shards, split="val", modalities=["S2L2A"], batch_size=8, s2_offset=False,
                                           return_metadata=True), 0), "S2L2A")
    assert set(theirs) == set(ours) and len(ours) == N
    for key, img in theirs.items():
        np.testing.assert_array_equal(np.asarray(img), ours[key].numpy())


def test_published_looking_shards_that_are_not_the_published_list_are_counted(tmp_path):
    """Five val shards named 000002..000006 (a renumbered subset): their real sizes, not the table's 2,176."""
    from ssl4eo_zarr import schema, synthetic

    made = synthetic.make_shards(str(tmp_path), 23, per_shard=5, size=8, seed=4, modalities=("S2L2A",))
    paths = made["S2L2A"]
    assert len(paths) == 5
    renamed = []
    for k, path in reversed(list(enumerate(paths))):
        new = os.path.join(os.path.dirname(path), schema.shard_name(k + 2))
        os.rename(path, new)
        renamed.insert(0, new)
    ds = sz.ChunkDataset(renamed, modalities=["S2L2A"], batch_size=4, shuffle=False, return_metadata=True)
    assert sum(ds.counts) == 23 and ds.counts == [5, 5, 5, 5, 3]
    samples = [s for b in DataLoader(ds, batch_size=None, num_workers=2) for s in b["sample"]]
    assert len(samples) == len(set(samples)) == 23


@pytest.mark.parametrize("timestamps, t", [("all", 4), ([0, 2], 2), (3, None), ("random", None)])
def test_one_shape_rule_for_every_modality(both, timestamps, t):
    """The time axis follows what is asked for, never the modality: DEM has T = 1 where others have T."""
    _, shards = both
    ds = sz.ChunkDataset(shards, split="val", modalities=["S2L2A", "S1GRD", "DEM"], timestamps=timestamps,
                         batch_size=4, return_metadata=True, seed=1)
    batch = next(iter(ds))
    if t is None:
        assert batch["S2L2A"].shape == (4, 12, SIZE, SIZE) and batch["DEM"].shape == (4, 1, SIZE, SIZE)
        assert batch["cloud_mask"].shape == (4, SIZE, SIZE) and batch["time_DEM"].shape == (4,)
    else:
        assert batch["S2L2A"].shape == (4, t, 12, SIZE, SIZE) and batch["S1GRD"].shape == (4, t, 2, SIZE, SIZE)
        assert batch["DEM"].shape == (4, 1, 1, SIZE, SIZE) and batch["time_DEM"].shape == (4, 1)
        assert batch["cloud_mask"].shape == (4, t, SIZE, SIZE)


def test_a_remote_ssl4eo_root_with_many_shards_is_not_taken_for_terramesh(tmp_path):
    """TerraMesh numbers its SSL4EO-S12 val shard 000009: a root of SSL4EO-S12 shards numbered from 000001 that
    also has a 000009 is still SSL4EO-S12, every shard of it."""
    from ssl4eo_zarr.layout import resolve
    from ssl4eo_zarr.testing import RangeHTTPServer

    synthetic.make_shards(str(tmp_path), 40, per_shard=4, size=8, seed=1, modalities=("S2L2A",))
    with RangeHTTPServer(str(tmp_path)) as server:
        sets = resolve(server.url, split="val", modalities=["S2L2A"])
    assert [cs.name for cs in sets] == [schema.shard_name(i) for i in range(1, 11)]
    assert {cs.corpus for cs in sets} == {"ssl4eo-s12"}
