"""Members read by parts: over a real static HTTP server the loader steps over the band chunks of timestamps it
does not deliver, gives the same tensors as whole members, and moves far fewer bytes; members whose layout
contradicts the one-timestep-per-chunk guess still read right."""

import contextlib
import os
import zipfile

import numpy as np
import pytest
import xarray as xr
from torch.utils.data import DataLoader

import ssl4eo_zarr as sz
from ssl4eo_zarr import synthetic
from ssl4eo_zarr.memberparts import FIRST_HEAD, TimeSelect
from ssl4eo_zarr.shardfile import ShardStream, bands_meta, open_member_group, read_time, shard_index, write_shard
from ssl4eo_zarr.storage.zarrcompat import zarr_major
from ssl4eo_zarr.testing import RangeHTTPServer

MODS = ["S2L2A", "S2L1C", "DEM"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("parts") / "shards")
    synthetic.make_shards(root, 20, per_shard=8, size=64, seed=5, split="val", modalities=tuple(MODS))
    return root


def _tensors(src, **kw):
    ds = sz.ChunkDataset(src, split="val", modalities=MODS, batch_size=5, seed=3, **kw)
    out = {}
    for n, b in enumerate(DataLoader(ds, batch_size=None, num_workers=2)):
        # Without metadata, places in the (seeded, identical) delivery order name the locations.
        for j, s in enumerate(b.get("sample", [f"{n}/{j}" for j in range(len(b[MODS[0]]))])):
            out[s] = {k: b[k][j].clone() for k in [*MODS, "cloud_mask"] if k in b}
    return out


@pytest.mark.parametrize("timestamps", [0, 2, "random", [1, 3]])
def test_the_loader_steps_over_unused_timestamps_and_gives_the_same_tensors(shards, timestamps):
    metadata = timestamps != [1, 3]
    local = _tensors(shards, timestamps=timestamps, return_metadata=metadata)
    with RangeHTTPServer(shards) as server:
        got = {}
        for skip in (False, True):
            server.reset_counts()
            got[skip] = _tensors(server.url, timestamps=timestamps, return_metadata=metadata, skip_unused=skip)
            got[skip, "bytes"] = server.bytes_served
            got[skip, "requests"] = server.requests
    for skip in (False, True):
        assert sorted(got[skip]) == sorted(local)
        for s, mods in got[skip].items():
            assert set(mods) == set(MODS) | ({"cloud_mask"} if metadata else set())
            for k, v in mods.items():
                np.testing.assert_array_equal(v.numpy(), local[s][k].numpy(), err_msg=f"{timestamps} {s} {k}")
    # Two S2 modalities of 20 locations: 3 of 4 band chunks (2 of 4 for [1, 3]) are left on the host.
    ratio = got[True, "bytes"] / got[False, "bytes"]
    assert ratio < (0.7 if timestamps == [1, 3] else 0.5), ratio
    # Whole members: one GET per shard and modality (and the layout's probes); by parts: bounded requests, a few
    # per S2 member at most.
    assert got[True, "requests"] <= got[False, "requests"] + 3 * 2 * 20


def test_the_first_batch_comes_in_one_span_only_where_the_left_out_chunks_cost_little():
    """The first batch's members read whole in one request per shard (the span) on the published host's link (50 ms,
    50 MB/s per response: ~1.2 x the time of parts, a request per member saved); by parts where the host caps what
    all responses get together (a 100 Mbit/s home link, or 100 MB/s for the worker's 8 responses), since there the
    chunks left out cost 2.5-4 x; by parts too on a slow response, and where sizes are unknown the span."""
    from ssl4eo_zarr.costmodel import Link
    from ssl4eo_zarr.loader.dataset import SPREAD
    from ssl4eo_zarr.memberparts import parts_jump, warm_span

    chunk, member = 1_100_000, 4_450_000  # full-size S2L2A: one season's band chunk, a member of four
    published = Link(0.05, 50e6).with_connections(SPREAD)
    home = Link(0.05, 12.5e6, 32, total=12.5e6).with_connections(SPREAD)
    capped = Link(0.05, 50e6, 32, total=100e6).with_connections(SPREAD)
    slow = Link(0.05, 10e6).with_connections(SPREAD)
    for link in (published, home, capped, slow):
        assert parts_jump(link, chunk, 4, [0], random=False) is not None, "all of them read by parts"
    assert warm_span(published, chunk, member, 4, [0], random=False)
    assert not warm_span(home, chunk, member, 4, [0], random=False)
    assert not warm_span(capped, chunk, member, 4, [0], random=False)
    assert not warm_span(slow, chunk, member, 4, [0], random=False)
    assert warm_span(home, chunk, 0, 4, [0], random=False) and warm_span(home, None, member, 4, [0], random=False)


def test_members_are_read_by_parts_only_where_the_link_makes_that_faster(shards):
    from ssl4eo_zarr.costmodel import LOCAL, Link
    from ssl4eo_zarr.loader.dataset import SPREAD
    from ssl4eo_zarr.memberparts import parts_jump

    far, near = Link(0.05, 50e6), Link(0.0005, 1e9)
    mb = 1_100_000  # one full-size S2L2A band chunk
    assert parts_jump(far, mb, 4, [0], random=False) == 2_500_000  # 3.3 MB left out against one round trip
    assert parts_jump(far, mb, 4, [2], random=False) is None  # two round trips (5 MB) for 3.3 MB
    assert parts_jump(Link(0.05, 20e6), mb, 4, [2], random=False) == 2_000_000  # at 20 MB/s it pays
    # A random season: 1.75 round trips a member; 4.4 MB at 50 MB/s, 1.75 MB at 20 MB/s.
    assert parts_jump(far, mb, 4, [0], random=True) is None
    assert parts_jump(Link(0.05, 20e6), mb, 4, [0], random=True) == 1_750_000
    assert parts_jump(far, mb, 4, [0, 1], random=False) is None  # 2.2 MB left out
    assert parts_jump(near, mb, 4, [0], random=False) is not None
    assert parts_jump(near, 100, 4, [0], random=False) is None and parts_jump(LOCAL, mb, 4, [0], random=False) is None
    assert parts_jump(far, None, 4, [0], random=False) is None  # no band chunk near the first member's front
    # A host capped at 400 MB/s in all: the responses one worker has in flight (its spread) get 50 MB/s each,
    # and 2.2 MB left out do not pay for a round trip; 32 responses would get 12.5 MB/s each, and they would.
    capped = Link(0.05, 50e6, 32, total=50e6 * SPREAD)
    assert parts_jump(capped.with_connections(SPREAD), mb, 4, [0, 1], random=False) is None
    assert parts_jump(capped, mb, 4, [0, 1], random=False) == 625_000
    with RangeHTTPServer(shards) as server:
        kw = dict(split="val", modalities=MODS, batch_size=5)
        assert sz.ChunkDataset(server.url, timestamps="all", **kw).jump is None
        assert sz.ChunkDataset(server.url, timestamps=0, skip_unused=False, **kw).jump is None
        assert sz.ChunkDataset(server.url, timestamps=0, skip_unused=True, **kw).jump == 0
        cached = sz.ChunkDataset(server.url, timestamps=0, cache_dir=str(server.folder) + "-cache", skip_unused=True,
                                 **kw)
        assert cached.jump is None, "a cache keeps whole members for the epochs that pick other timestamps"
        server.reset_counts()
        sz.ChunkDataset(server.url, timestamps=0, skip_unused=False, **kw)
        layout = server.requests
        server.reset_counts()
        server.seen.clear()
        sz.ChunkDataset(server.url, timestamps=0, **kw)  # measured: the link (once per host), one band chunk's size
        # Whole members read each modality's first header (sizing the first batch's request); by parts S2L2A's
        # first member's front (its band chunk) takes the place of its header, and the link's probe (at most 17
        # requests, once per host) may have run already when the split's counts were read above.
        assert 0 <= server.requests - layout <= 17
        assert [r[3].get("Range") for r in server.seen].count(f"bytes=0-{FIRST_HEAD - 1}") == 1
    assert sz.ChunkDataset(shards, timestamps=0, skip_unused=True, **kw).jump is None, "local files: nothing to skip"


def _member(path, times, chunk_t):
    rng = np.random.default_rng(len(times) * 10 + chunk_t)
    ds = xr.Dataset({"bands": (("time", "band", "y", "x"), rng.integers(0, 3000, (len(times), 2, 16, 16))
                               .astype("int16")),
                     "cloud_mask": (("time", "y", "x"), rng.integers(0, 7, (len(times), 16, 16)).astype("uint8"))},
                    coords={"time": np.asarray(times, dtype="datetime64[ns]"), "band": ["B02", "B03"]})
    kw = {"zarr_format": 2} if zarr_major() >= 3 else {}
    folder = str(path) + ".d"
    ds.to_zarr(folder, consolidated=True, encoding={"bands": {"chunks": (chunk_t, 2, 16, 16)},
                                                    "cloud_mask": {"chunks": (chunk_t, 16, 16)}}, **kw)
    # Zipped in name order: .zmetadata first, small arrays after the chunks, unlike this library's writer.
    with zipfile.ZipFile(path, "w") as zf:
        for top, _dirs, files in sorted(os.walk(folder)):
            for f in sorted(files):
                zf.write(os.path.join(top, f), os.path.relpath(os.path.join(top, f), folder))
    return ds


def test_a_member_chunked_otherwise_or_holding_one_timestep_reads_right(tmp_path):
    four = [f"2021-0{m}-01" for m in (1, 4, 7, 9)]
    made = {"per1": _member(tmp_path / "a.zarr.zip", four, 1), "per2": _member(tmp_path / "b.zarr.zip", four, 2),
            "one": _member(tmp_path / "c.zarr.zip", four[:1], 1)}
    shard = str(tmp_path / "s.tar")
    write_shard(shard, [(f"{k}.zarr.zip", open(tmp_path / f"{f}.zarr.zip", "rb").read())
                        for k, f in zip(made, "abc")])
    for t in range(4):
        select = TimeSelect({"bands": frozenset([t]), "cloud_mask": frozenset([t])}, 4)
        stream = ShardStream(shard, jump=0)
        assert stream.parts is not None
        stream.parts.tail = 1024  # these members are small: a tail as short as .zmetadata and the directory
        for key, ds in made.items():
            member = stream.advance()
            assert member is not None and member.key == key
            archive, group = open_member_group(stream.read(select, select), f"{shard}/{key}")
            meta = bands_meta(group, key)
            stored = min(t, meta.shape[0] - 1)
            out = np.empty(meta.shape[1:], meta.dtype)
            read_time(archive, meta, stored, out)
            np.testing.assert_array_equal(out, ds["bands"].values[stored], err_msg=f"{key} t={t}")
            mask = group.arrays["cloud_mask"]
            got = np.empty(mask.shape[1:], mask.dtype)
            read_time(archive, mask, stored, got)
            np.testing.assert_array_equal(got, ds["cloud_mask"].values[stored])
        assert stream.parts.skipped > 0, "the per-timestep member left chunks out"
        stream.close()
    assert os.path.getsize(shard) > 0


def test_a_truncated_shard_read_by_parts_is_named(shards, tmp_path):
    import shutil

    from ssl4eo_zarr import CorruptFileError, schema

    root = tmp_path / "cut"
    shutil.copytree(shards, root)
    victim = root / "val" / "S2L2A" / schema.shard_name(2)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with RangeHTTPServer(str(root)) as server:
        # Counts given: nothing walks the shards before the workers stream them by parts.
        kw = dict(split="val", modalities=MODS, batch_size=5, timestamps=0, skip_unused=True, shuffle=False,
                  samples_per_file=[8, 8, 4])
        ds = sz.ChunkDataset(server.url, **kw)
        with pytest.raises(CorruptFileError, match=schema.shard_name(2)):
            list(DataLoader(ds, batch_size=None, num_workers=0))
        skipping = sz.ChunkDataset(server.url, on_error="skip", **kw)
        with pytest.warns(RuntimeWarning, match=schema.shard_name(2)):
            got = sum(len(b["S2L2A"]) for b in skipping)
        assert 8 + 4 <= got < 20, "the other shards whole, the cut one up to the cut"


def test_selected_members_are_read_by_parts_too(shards):
    """samples=: members found at construction are read by range, each by parts (its front, then its tail)."""
    ids = sorted(sz.open_dataset(shards, split="val", modalities=["S2L2A"])["sample"].values)[::3]
    local = _tensors(shards, timestamps=1, return_metadata=True, samples=ids)
    assert sorted(local) == sorted(ids)
    with RangeHTTPServer(shards) as server:
        got = {}
        for skip in (False, True):
            server.reset_counts()
            got[skip] = _tensors(server.url, timestamps=1, return_metadata=True, samples=ids, skip_unused=skip)
            got[skip, "bytes"] = server.bytes_served
    for skip in (False, True):
        for s, mods in local.items():
            for k, v in mods.items():
                np.testing.assert_array_equal(got[skip][s][k].numpy(), v.numpy(), err_msg=f"{skip} {s} {k}")
    assert got[True, "bytes"] < 0.6 * got[False, "bytes"], (got[True, "bytes"], got[False, "bytes"])


def test_the_remote_shards_read_at_once_begin_together(shards):
    # A set's first member costs a few round trips. Sets begun only when one of their rows was first asked for
    # began one after another, each after the previous set's first member had arrived (0.45 s apart at 50 ms).
    with RangeHTTPServer(shards) as server:
        ds = sz.ChunkDataset(server.url, split="val", modalities=MODS, batch_size=5, seed=3, timestamps=0,
                             skip_unused=True)
        mine, _ = ds._my_batches(0, 1)
        reader = ds._reader(ds._spec(), mine, shared=False)
        try:
            first = mine[0].rows[0]
            reader._fetch(*first)
            sets = {f for b in mine for f, _ in b.rows}
            assert ds.spread >= 3 and len(sets) == 3
            assert set(reader.aheads) == sets, "every set of the spread reads from the start"
            # The rest of the epoch comes from the sets begun early (the first row was taken above).
            got = [reader.batch(b) for b in mine[1:]]
            assert all(b is not None for b in got) and sum(len(b["S2L2A"]) for b in got) == 20 - len(mine[0].rows)
        finally:
            reader.close()


def test_a_streams_first_member_read_by_parts_costs_two_requests(shards):
    """The opening request brings the shard's size, its first header and the first member's front as far as
    construction measured it (a HEAD, the header's window and the front took three); the member's tail and the
    next front are the second. The bytes are the ones a whole read gives, where they are read."""
    with RangeHTTPServer(shards) as server:
        ds = sz.ChunkDataset(server.url, split="val", modalities=MODS, timestamps=0, skip_unused=True)
        assert ds.jump == 0 and ds.first_front > 0
        path = ds.sets[0].paths["S2L2A"]
        select = TimeSelect({"bands": frozenset([0]), "cloud_mask": frozenset()}, 4)
        server.reset_counts()
        stream = ShardStream(path, jump=0, front=ds.first_front)
        member = stream.advance()
        data = stream.read(select, select)
        assert server.requests == 2, [s[3].get("Range") for s in server.seen[-server.requests:]]
        stream.close()
        whole = ShardStream(path)
        assert whole.advance() == member
        full = whole.read()
        whole.close()
        got = []
        for buf in (data, full):
            archive, group = open_member_group(buf, member.name)
            meta = bands_meta(group, member.name)
            out = np.zeros(meta.shape[1:], meta.dtype)
            read_time(archive, meta, 0, out)
            got.append(out)
        np.testing.assert_array_equal(*got)
        assert got[0].any()


@contextlib.contextmanager
def _first_batch(ds, server):
    """One worker's reader over ``ds``'s epoch: its batches, the reader, its first batch, the sets that batch
    reads and the host's requests up to it."""
    mine, _ = ds._my_batches(0, 1)
    reader = ds._reader(ds._spec(), mine, shared=False)
    try:
        server.reset_counts()
        first = reader.batch(mine[0])
        yield mine, reader, first, {s for s, _ in mine[0].rows}, server.requests
    finally:
        reader.close()


@pytest.mark.parametrize("sized", [True, False])
def test_the_first_batch_by_parts_costs_at_most_two_requests_per_shard_and_modality(shards, sized):
    """By parts a member costs a round trip: before the first batch that added up to one request per member. Its
    members are read whole, one request per shard and modality (two when the first member's size was not told at
    construction, or members outgrow it), and nothing else is read until it is made; later members by parts.
    (The span is the cost model's choice on a link like the published host's, see ``test_costmodel.py``; this
    server on 127.0.0.1 is too fast for any reading by parts to be chosen, so both are set here.)"""
    local = _tensors(shards, timestamps=0, return_metadata=True)
    with RangeHTTPServer(shards) as server:
        ds = sz.ChunkDataset(server.url, split="val", modalities=MODS, batch_size=16, seed=3, timestamps=0,
                             return_metadata=True, skip_unused=True)
        assert ds.member_bytes.get("S2L2A", 0) > 0
        assert not ds.warm_span, "skip_unused=True asks for the fewest bytes: the first batch by parts too"
        ds.warm_span = True
        if not sized:
            ds.member_bytes.clear()
        with _first_batch(ds, server) as (mine, reader, first, sets, before):
            assert len(sets) == 3 and len(mine[0].rows) == 16
            # Construction told each modality's member size; without it the streams read by parts learn theirs
            # from their first member. Shards read to their end (the end-of-archive blocks checked) cost nothing
            # more. DEM is streamed whole: its one response asks for the first batch's members when sized (the
            # test's shards are small, so all of them), else for the whole shard.
            per = {"S2L2A": 1 if sized else 2, "S2L1C": 1 if sized else 2, "DEM": 1}
            seen = [(s[2], s[3].get("Range")) for s in server.seen[-before:]]
            assert before == len(sets) * sum(per.values()), seen
            assert all(r.endswith("-") != sized for p, r in seen if "/DEM/" in p), seen
            assert server.requests == before, "nothing is read past the first batch until the next is asked for"
            server.reset_counts()
            rest = [reader.batch(b) for b in mine[1:]]
            rest_bytes = server.bytes_served
        later = [(s, i) for b in mine[1:] for s, i in b.rows]
        whole_bytes = sum(shard_index(ds.sets[s].paths[m].replace(server.url, shards))[i].size
                          for s, i in later for m in MODS)
    got = {}
    for b in [first, *rest]:
        for j, s in enumerate(b["sample"]):
            got[s] = {k: b[k][j] for k in [*MODS, "cloud_mask"]}
    assert sorted(got) == sorted(local)
    for s, mods in got.items():
        for k, v in mods.items():
            np.testing.assert_array_equal(v.numpy(), local[s][k].numpy(), err_msg=f"{s} {k}")
    # The later locations came by parts: three of four band chunks left on the host.
    assert len(later) == 4 and rest_bytes < 0.75 * whole_bytes, (rest_bytes, whole_bytes)


def test_shards_streamed_whole_ask_for_the_first_batchs_members_first(shards):
    """Members streamed whole (all seasons: nothing to leave on the host): each stream's first response asks for
    the members the first batch uses (sized by each modality's first member, read at construction) instead of
    the whole shard, which a host would push into the socket while the first batch waits; one request per shard
    and modality, nothing more until the next batch is asked for, and the same tensors."""
    local = _tensors(shards, timestamps="all", return_metadata=True)
    with RangeHTTPServer(shards) as server:
        ds = sz.ChunkDataset(server.url, split="val", modalities=MODS, batch_size=4, seed=3, timestamps="all",
                             return_metadata=True)
        assert ds.jump is None and set(ds.member_bytes) == set(MODS)
        with _first_batch(ds, server) as (mine, reader, first, sets, before):
            seen = [(s[2], s[3].get("Range")) for s in server.seen[-before:]]
            assert server.requests == before, "nothing is read past the first batch until the next is asked for"
            rest = [reader.batch(b) for b in mine[1:]]
        stride = max(m.size for s in sets for m in shard_index(ds.sets[s].paths["S2L2A"].replace(server.url, shards)))
        size = {s: os.path.getsize(ds.sets[s].paths["S2L2A"].replace(server.url, shards)) for s in sets}
    assert before == len(sets) * len(MODS), seen
    ends = [int(r.split("-")[1]) for p, r in seen if "/S2L2A/" in p]
    assert len(ends) == len(sets) and all(not r.endswith("-") for _, r in seen), seen
    # Bounded by the first batch's members (4 rows: at most 4 members of a shard and the stream's buffer), short
    # of the shard's end.
    assert all(e < 4 * 1.15 * stride + (2 << 20) for e in ends) and min(ends) < max(size.values()), (ends, size)
    for b in [first, *rest]:
        for j, s in enumerate(b["sample"]):
            for k in [*MODS, "cloud_mask"]:
                np.testing.assert_array_equal(b[k][j].numpy(), local[s][k].numpy(), err_msg=f"{s} {k}")


def test_the_fewest_bytes_read_the_first_batch_by_parts_too(shards):
    """``skip_unused=True`` (a metered or slow link): the first batch's members are read by parts like the rest,
    each in requests of about a member at most (the span would take a shard's first batch in one), nothing past
    them before it is made, and the same tensors."""
    local = _tensors(shards, timestamps=0, return_metadata=True)
    with RangeHTTPServer(shards) as server:
        ds = sz.ChunkDataset(server.url, split="val", modalities=MODS, batch_size=16, seed=3, timestamps=0,
                             return_metadata=True, skip_unused=True)
        with _first_batch(ds, server) as (mine, _reader, first, sets, before):
            seen = server.seen[-before:]
            assert server.requests == before, "nothing is read past the first batch until the next is asked for"
        stride = max(m.size for s in sets for m in shard_index(ds.sets[s].paths["S2L2A"].replace(server.url, shards)))
    spans = [tuple(int(x) for x in r[3]["Range"][6:].split("-")) for r in seen if "/DEM/" not in r[2]]
    assert len(spans) > 2 * len(sets) * 2 and max(b - a for a, b in spans) < 1.5 * stride, spans
    assert len(first["sample"]) == 16
    for j, s in enumerate(first["sample"]):
        for k in [*MODS, "cloud_mask"]:
            np.testing.assert_array_equal(first[k][j].numpy(), local[s][k].numpy(), err_msg=f"{s} {k}")


def test_selected_members_side_by_side_come_in_one_span(shards, tmp_path):
    """Members found beforehand (``samples=``, here every id, found through ``index=``) are read by range, no
    header read; where they lie side by side, the first batch's members of a shard read by parts come in one exact
    span: one request per shard and modality (a sparse selection reads each by parts, see above)."""
    from ssl4eo_zarr.shardindex import write_index

    mods = ["S2L2A", "S2L1C"]
    out = write_index(shards, str(tmp_path / "val.parquet"), split="val", modalities=mods)
    ids = [str(s) for s in sz.open_dataset(shards, split="val", modalities=["S2L2A"])["sample"].values]
    kw = dict(split="val", modalities=mods, batch_size=16, seed=3, timestamps=0, return_metadata=True)
    want = {}
    for b in sz.ChunkDataset(shards, samples=ids, **kw):
        want.update({s: {k: b[k][j] for k in mods} for j, s in enumerate(b["sample"])})
    with RangeHTTPServer(shards) as server:
        ds = sz.ChunkDataset(server.url, samples=ids, index=out, skip_unused=True, **kw)
        ds.warm_span = True  # the cost model's choice at 50 ms and 50 MB/s (skip_unused=True reads by parts)
        with _first_batch(ds, server) as (_mine, _reader, first, sets, before):
            assert before == len(sets) * len(mods), [(s[2], s[3].get("Range")) for s in server.seen[-before:]]
    assert len(first["sample"]) == 16
    for j, s in enumerate(first["sample"]):
        for k in mods:
            np.testing.assert_array_equal(first[k][j].numpy(), want[s][k].numpy(), err_msg=f"{s} {k}")
