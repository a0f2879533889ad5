"""Where members lie, learnt cheaply: counts from the published totals (both corpora, exact), selections that
find their shards through the metadata table, index files (round trip, stale refusal), against a host of the
published size (every published shard name and count, made up on request) and real local shards."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import ssl4eo_zarr as sz
from ssl4eo_zarr import schema, synthetic
from ssl4eo_zarr.errors import CorruptFileError
from ssl4eo_zarr.shardindex import StaleIndexError, known_counts, load_index, write_index
from ssl4eo_zarr.testing import RangeHTTPServer
from ssl4eo_zarr.virtualhost import ID_BASE, VirtualHost, sample_members

gpd = pytest.importorskip("geopandas")


def test_published_counts_of_both_corpora_from_their_totals():
    """Literal published numbers, not the schema compared with itself."""
    def names(corpus, split, prefixes=None):
        return [schema.shard_name(i, sub.prefix) for sub in corpus.subsets if prefixes is None or sub.prefix in prefixes
                for i in range(sub.ranges[split][0], sub.ranges[split][1] + 1)]

    tm = schema.TERRAMESH
    train = schema.published_shard_counts("train", names(tm, "train"), tm)
    assert len(train) == 889 and sum(train) == 9_089_536
    assert train[:792] == [10_240] * 792 and train[792] == 3_584  # Major TOM 000001..000793
    assert train[793:888] == [10_240] * 95 and train[888] == 3_072  # SSL4EO-S12 000794..000889
    assert sum(train[793:]) == 243_968 * 4
    val = schema.published_shard_counts("val", names(tm, "val"), tm)
    assert val == [10_240] * 7 + [8_704] + [8_704] and sum(val) == 89_088 == 80_384 + 2_176 * 4
    only_ssl = schema.published_shard_counts("train", names(tm, "train", {"ssl4eos12"}), tm)
    assert only_ssl == train[793:]
    assert schema.published_shard_counts("train", names(tm, "train")[:-1], tm) is None, "a missing shard"
    ssl = schema.published_shard_counts("train", [schema.shard_name(i) for i in range(1, 478)])
    assert ssl == [512] * 476 + [256] and sum(ssl) == 243_968
    assert schema.published_shard_counts("val", [schema.shard_name(i) for i in range(1, 6)]) == [512] * 4 + [128]


def test_a_local_copy_under_published_names_is_counted_from_its_headers(tmp_path):
    """A synthetic or fetched TerraMesh val under the published names holds far fewer members: its files are too
    small for the published counts, so its headers are read."""
    synthetic.make_terramesh(str(tmp_path), 64, 2, per_shard=8, size=16, modalities=("S2L2A", "DEM"))
    ds = sz.ChunkDataset(str(tmp_path), split="val", modalities=["S2L2A", "DEM"], timestamps=0, batch_size=8)
    assert [cs.name for cs in ds.sets][-1] == "ssl4eos12_shard_000009.tar" and len(ds.sets) == 9
    assert known_counts(ds.sets) is None
    assert ds.counts == [8] * 9


def test_a_shard_holding_another_count_than_published_is_named(tmp_path):
    """Published names, files large enough to pass for published ones, but fewer members: the shard that ends
    early is named with the count the published totals gave, never silently shortened."""
    synthetic.make_shards(str(tmp_path), 250, per_shard=50, size=16, seed=1, modalities=("S2L2A",))
    ds = sz.ChunkDataset(str(tmp_path), split="val", modalities=["S2L2A"], batch_size=16, shuffle=False)
    assert ds.counts == [512] * 4 + [128]
    with pytest.raises(CorruptFileError, match=r"ssl4eos12_shard_000001\.tar.*ends after 50 members; the published "
                                               r"totals said 512"):
        list(ds)


@pytest.fixture(scope="module")
def members():
    return {"ssl4eo-s12": sample_members(16, ("S2L2A", "S1GRD", "DEM")),
            "terramesh": sample_members(16, ("S2L2A", "S1GRD", "DEM"), corpus="terramesh")}


@pytest.fixture(scope="module")
def host(members, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("vhost") / "requests.log")
    with VirtualHost(members, log=log) as server:
        yield server


def test_terramesh_train_at_the_published_size_streams_without_reading_headers_first(host):
    """9,089,536 samples: counted from the totals, a first batch after a few requests per shard read."""
    host.reset_counts()
    ds = sz.ChunkDataset(host.root("terramesh"), split="train", modalities=["S2L2A", "DEM"], timestamps=0,
                         batch_size=16, seed=3)
    assert len(ds.sets) == 889 and sum(ds.counts) == 9_089_536
    setup = host.requests
    assert setup < 60, f"{setup} requests to open TerraMesh train: headers were read"
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    batch = next(iter(loader))
    assert batch["S2L2A"].shape == (16, 12, 16, 16) and batch["subset"] in ("majortom", "ssl4eos12")
    shards = {p for p in host.paths("GET") if p.endswith(".tar")}
    streamed = host.requests - setup
    assert streamed <= 2 * len(shards) + 4, (streamed, sorted(shards))


def test_finding_terramesh_on_a_host_asks_each_name_once(host):
    """Resolving a root probes names (a catch-all check, each subset's first and last shards, each modality): a
    round trip each, so none twice (a subset's first shard and a count's first guess used to be asked again)."""
    from ssl4eo_zarr.layout import resolve

    host.reset_counts()
    sets = resolve(host.root("terramesh"), split="train", modalities=["S2L2A", "DEM"])
    assert len(sets) == 889
    heads = host.paths("HEAD")
    assert heads and len(heads) == len(set(heads)), sorted(heads)
    host.reset_counts()
    assert len(resolve(host.root("terramesh"), split="train", modalities=["S2L2A", "DEM"])) == 889
    assert sorted(host.paths("HEAD")) == sorted(heads), "nothing is kept beyond one call"


def test_a_terramesh_dataset_on_a_host_asks_each_name_once(host):
    """Construction resolves the root, then checks each subset's first shard is big enough for the published
    counts: the size the resolution's HEAD of that shard already said (each of those was asked again)."""
    host.reset_counts()
    ds = sz.ChunkDataset(host.root("terramesh"), split="train", modalities=["S2L2A", "DEM"], timestamps=0)
    assert sum(ds.counts) == 9_089_536
    heads = host.paths("HEAD")
    assert heads and len(heads) == len(set(heads)), sorted(heads)


def test_selected_ids_are_found_through_the_metadata_tables_tar_column(host, members):
    """200 ids, 10 in each of 20 shards of SSL4EO-S12 train: only those 20 shards are indexed (not 477)."""
    rng = np.random.default_rng(0)
    shards = sorted(rng.choice(477, 20, replace=False).tolist())
    ids = [f"{ID_BASE['train'] + 512 * s + k:07d}" for s in shards for k in sorted(rng.choice(256, 10, replace=False))]
    host.reset_counts()
    ds = sz.ChunkDataset(host.root(), split="train", modalities=["S2L2A", "DEM"], samples=ids, batch_size=25, seed=1,
                         return_metadata=True)
    touched = {p.rsplit("/", 1)[-1] for p in host.paths("GET") if p.endswith(".tar")}
    assert touched == {schema.shard_name(s + 1) for s in shards}, "headers read beyond the shards holding the ids"
    # The ids lie in the first half of each shard: each walk stops at the last of them.
    stride = 512 + -(-len(members["ssl4eo-s12"]["S2L2A"]) // 512) * 512
    ends = [int(r.split("-")[1]) for m, p, r in host.log() if m == "GET" and "/S2L2A/" in p and p.endswith(".tar")]
    assert max(ends) < 256 * stride + (1 << 20) + 8 * stride, (max(ends), 512 * stride)
    host.reset_counts()
    got = [k for b in DataLoader(ds, batch_size=None, num_workers=2) for k in b["sample"]]
    assert sorted(got) == sorted(ids)
    assert host.requests <= 2 * 200 + 40, f"{host.requests} requests to read 200 members of 2 modalities"


def test_fetch_plans_a_selection_from_the_table_and_an_index(host, tmp_path):
    ids = [f"{ID_BASE['val'] + k:07d}" for k in (3, 700, 1500, 2100)]
    host.reset_counts()
    plan = sz.fetch(host.root(), str(tmp_path / "dry"), split="val", modalities=["S2L2A"], locations=ids,
                    dry_run=True)
    touched = {p.rsplit("/", 1)[-1] for p in host.paths("GET") if p.endswith(".tar")}
    assert touched == {schema.shard_name(i) for i in (1, 2, 3, 5)}
    assert sorted(s.key for s in plan.selected) == ids


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("indexed"))
    synthetic.make_shards(root, 30, per_shard=8, size=16, seed=5, modalities=("S2L2A", "S1GRD"))
    return root


def test_an_index_file_round_trips_and_replaces_every_header_read(shard_root, tmp_path):
    from ssl4eo_zarr.shardfile import scan_shard

    out = write_index(shard_root, str(tmp_path / "val.parquet"), split="val", modalities=["S2L2A", "S1GRD"])
    index = load_index(out)
    for m in ("S2L2A", "S1GRD"):
        for name in sorted(os.listdir(os.path.join(shard_root, "val", m))):
            assert index.members(m, name) == scan_shard(os.path.join(shard_root, "val", m, name))
    ids = [str(s) for s in sz.open_dataset(shard_root, split="val")["sample"].values[[2, 17, 29]]]
    with RangeHTTPServer(shard_root) as server:
        url = server.url
        kw = {"split": "val", "modalities": ["S2L2A", "S1GRD"], "batch_size": 3, "return_metadata": True}
        want = next(iter(sz.ChunkDataset(shard_root, samples=ids, **kw)))
        server.reset_counts()
        ds = sz.ChunkDataset(url, samples=ids, index=out, **kw)
        got = next(iter(ds))
        ranges = [h.get("Range", "") for _t, method, _p, h in server.seen if method == "GET"]
        assert all(r and int(r.split("-")[1]) - int(r.split("=")[1].split("-")[0]) > 1024 for r in ranges), \
            "a request smaller than a member: a header was read"
        assert sorted(got["sample"]) == sorted(want["sample"])
        order = [list(got["sample"]).index(s) for s in want["sample"]]
        assert torch.equal(got["S2L2A"][order], want["S2L2A"])
        view = sz.open_dataset(url, split="val", index=out)
        assert np.array_equal(view["S2L2A"].values, sz.open_dataset(shard_root, split="val")["S2L2A"].values)


def test_a_stale_index_is_refused(shard_root, tmp_path):
    import shutil

    root = str(tmp_path / "root")
    shutil.copytree(shard_root, root)
    out = write_index(root, str(tmp_path / "val.parquet"), split="val", modalities=["S2L2A"])
    shard = os.path.join(root, "val", "S2L2A", schema.shard_name(2))
    with open(shard, "ab") as f:
        f.write(bytes(10240))  # the shard grew: offsets may have moved
    ids = [str(s) for s in sz.open_dataset(shard_root, split="val")["sample"].values[[9]]]
    with pytest.raises(StaleIndexError, match=r"ssl4eos12_shard_000002\.tar changed since the index"):
        sz.ChunkDataset(root, split="val", modalities=["S2L2A"], samples=ids, index=out, batch_size=1)
    with pytest.raises(StaleIndexError):
        sz.open_dataset(root, split="val", modalities=["S2L2A"], index=out)


def test_index_command(shard_root, tmp_path, capsys):
    from ssl4eo_zarr.cli import main

    out = str(tmp_path / "idx.parquet")
    assert main(["index", shard_root, "--split", "val", "--modalities", "S2L2A,S1GRD", "-o", out]) == 0
    assert "indexed 4 shards x 2 modalities of val (60 members)" in capsys.readouterr().out
    assert load_index(out).members("S1GRD", schema.shard_name(4))[-1].key


def test_a_limit_over_the_published_shards_is_drawn_near_each_shards_front(host):
    """``limit=`` over the published SSL4EO-S12 shards (globally shuffled): each shard's share of a uniform draw
    is taken as a run near its front, so the walk reads ~FRONT + share headers of the drawn shards, not ~430;
    the same seed gives the same sample, another seed another."""
    from ssl4eo_zarr.fetching.plan import FRONT

    host.reset_counts()
    plan = sz.fetch(host.root(), "/nonexistent-dry-run", split="train", modalities=["S2L2A"], limit=60, seed=4,
                    dry_run=True)
    assert len(plan.selected) == len({s.key for s in plan.selected}) == 60
    holding = {plan.sets[s.set].name for s in plan.selected}
    assert len(holding) >= 45, "spread over the split as a uniform draw is (60 picks over 477 shards: ~57 shards)"
    touched = {p.rsplit("/", 1)[-1] for p in host.paths("GET") if p.endswith(".tar") and "/S2L2A/" in p}
    assert len(touched - holding) <= 1, "only the shards holding a pick are walked (and one probed)"
    per_shard = {}
    for s in plan.selected:
        per_shard.setdefault(s.set, []).append(s.row)
    for rows in per_shard.values():  # one run each, starting among the first FRONT members
        assert rows == list(range(rows[0], rows[0] + len(rows))) and rows[0] <= FRONT
    assert host.requests < len(holding) * (FRONT + 20), host.requests
    again = sz.fetch(host.root(), "/nonexistent-dry-run", split="train", modalities=["S2L2A"], limit=60, seed=4,
                     dry_run=True)
    other = sz.fetch(host.root(), "/nonexistent-dry-run", split="train", modalities=["S2L2A"], limit=60, seed=5,
                     dry_run=True)
    assert [s.key for s in again.selected] == [s.key for s in plan.selected]
    assert len({s.key for s in other.selected} & {s.key for s in plan.selected}) < 10
