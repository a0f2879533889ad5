from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssl4eo_zarr.loader.plan import delivery_order, epoch_plan, files_for_rank

counts_st = st.lists(st.integers(1, 64), min_size=1, max_size=30)


def _all(counts, world, workers, batch_size, drop_last, mix=1, epoch=0):
    return [epoch_plan(counts, seed=3, epoch=epoch, rank=r, world_size=world, num_workers=workers,
                       batch_size=batch_size, mix=mix, drop_last=drop_last) for r in range(world)]


@settings(max_examples=150, deadline=None)
@given(counts=counts_st, world=st.integers(1, 4), workers=st.integers(1, 3),
       batch_size=st.one_of(st.none(), st.integers(1, 70)), mix=st.integers(1, 3))
def test_every_sample_at_least_once_and_equal_batch_counts(counts, world, workers, batch_size, mix):
    plans = _all(counts, world, workers, batch_size, False, mix)
    totals = [sum(len(w) for w in p) for p in plans]
    assert len(set(totals)) == 1
    seen = Counter(row for p in plans for w in p for b in w for row in b.rows)
    assert set(seen) == {(f, i) for f, c in enumerate(counts) for i in range(c)}
    if len(counts) % world == 0 and batch_size is None:
        assert max(seen.values()) == 1


@settings(max_examples=150, deadline=None)
@given(counts=counts_st, world=st.integers(1, 4), workers=st.integers(1, 3),
       batch_size=st.one_of(st.none(), st.integers(1, 70)))
def test_drop_last_never_repeats_and_keeps_counts_equal(counts, world, workers, batch_size):
    plans = _all(counts, world, workers, batch_size, True)
    totals = [sum(len(w) for w in p) for p in plans]
    assert len(set(totals)) == 1
    seen = Counter(row for p in plans for w in p for b in w for row in b.rows)
    assert not seen or max(seen.values()) == 1
    if batch_size:
        assert all(len(b.rows) == batch_size for p in plans for w in p for b in w)


def test_files_per_rank_padding_is_at_most_one():
    for n in range(1, 20):
        for world in range(1, 6):
            ranks = [files_for_rank(n, seed=0, epoch=1, rank=r, world_size=world, shuffle=True, drop_last=False)
                     for r in range(world)]
            assert len({len(r) for r in ranks}) == 1
            flat = Counter(f for r in ranks for f in r)
            assert set(flat) == set(range(n))
            padded = sum(flat.values()) - n
            assert padded < world  # fewer padded slots than ranks, dealt one per rank at most
            assert padded == 0 or len(ranks[0]) == -(-n // world)


def test_plans_are_pure_and_epochs_differ():
    counts = [64] * 10
    a = _all(counts, 2, 2, 16, False, epoch=0)
    assert a == _all(counts, 2, 2, 16, False, epoch=0)
    assert a != _all(counts, 2, 2, 16, False, epoch=1)


def test_delivery_order_is_round_robin_skipping_exhausted_workers():
    assert delivery_order([3, 1, 2]) == [0, 1, 2, 0, 2, 0]
    assert delivery_order([0, 2]) == [1, 1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=4), st.integers(1, 100), st.integers(1, 130),
       st.integers(0, 3))
def test_a_streamed_buffer_starts_small_holds_at_most_its_size_and_delivers_everything(counts, batch_size, buffer,
                                                                                       seed):
    from ssl4eo_zarr.loader.plan import WARM_RAMP, WARM_START, stream_batches

    files = list(range(len(counts)))
    batches = stream_batches(files, counts, batch_size=batch_size, buffer=buffer, shuffle=True, seed=seed, epoch=0,
                             drop_last=False)
    delivered = [r for b in batches for r in b.rows]
    read = [(f, i) for f in files for i in range(counts[f])]
    assert sorted(delivered) == read
    position = {r: k for k, r in enumerate(read)}
    reached = -1
    for k, row in enumerate(delivered):
        reached = max(reached, position[row])
        # Read (reached + 1) and not yet delivered (k): never more than the buffer holds...
        assert reached + 1 - k <= max(buffer, 1)
        # ...and while it warms up, only as many as it has grown to, so the first batches come early.
        if reached + 1 < len(read):
            assert reached + 1 - k <= max(min(buffer, WARM_START + k // WARM_RAMP), 1)


def _buffer_step_by_step(order, buffer, rng):
    """WebDataset's shuffle buffer as it runs, one location at a time (with the warm-up): the reference."""
    from ssl4eo_zarr.loader.plan import WARM_RAMP, WARM_START

    pool, out, warm = [], [], 0
    while warm < len(order) and len(pool) < buffer - 1:
        pool.append(order[warm])
        warm += 1
        if len(pool) >= WARM_START + len(out) // WARM_RAMP:
            j = int(rng.integers(len(pool)))
            pool[j], pool[-1] = pool[-1], pool[j]
            out.append(pool.pop())
    picks = rng.integers(0, buffer, size=len(order)).tolist()
    for k in range(warm, len(order)):
        pool.append(order[k])
        j = picks[k]
        pool[j], pool[-1] = pool[-1], pool[j]
        out.append(pool.pop())
    return out + [pool[p] for p in rng.permutation(len(pool))]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 200), min_size=1, max_size=6), st.integers(1, 400), st.integers(1, 4),
       st.integers(0, 5))
def test_the_planned_buffer_delivers_what_the_buffer_run_step_by_step_delivers(counts, buffer, spread, seed):
    """A TerraMesh worker plans millions of locations, so the buffer is worked out with array operations, not
    run: the result must be the very order the running buffer gives, location for location."""
    from ssl4eo_zarr.loader.plan import SALT_STREAM, _spread, rng_for, stream_batches

    files = list(range(len(counts)))[::-1]
    planned = [r for b in stream_batches(files, counts, batch_size=7, buffer=buffer, shuffle=True, seed=seed,
                                         epoch=1, drop_last=False, spread=spread) for r in b.rows]
    run = _buffer_step_by_step(_spread(files, counts, None, spread), buffer, rng_for(seed, 1, SALT_STREAM, files[0]))
    assert planned == run


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=9), st.integers(1, 5), st.booleans())
def test_files_read_several_at_once_take_turns_location_by_location(counts, spread, subset):
    """The read order, built from grids: ``spread`` files at a time, one location of each in turn (a file that
    ran out skipped), the next group after; with ``rows`` only those locations, in their order."""
    from ssl4eo_zarr.loader.plan import _spread

    files = list(range(len(counts)))[::-1]
    rows = {f: list(range(counts[f]))[::-2] for f in files} if subset else None
    held = {f: rows[f] if rows else list(range(counts[f])) for f in files}
    expected = []
    for a in range(0, len(files), spread):
        group = files[a: a + spread]
        for p in range(max(len(held[f]) for f in group)):
            expected += [(f, held[f][p]) for f in group if p < len(held[f])]
    assert _spread(files, counts, rows, spread) == expected


def test_a_readers_use_counts_follow_the_plan_padding_included():
    from ssl4eo_zarr.loader.plan import Batch
    from ssl4eo_zarr.loader.shard_reader import RowUses

    batches = [Batch(((2, 0), (2, 3), (0, 1))), Batch(((2, 3), (0, 0)))]  # (2, 3) twice: a padded epoch
    uses = RowUses(batches, [4, 9, 5])
    assert uses.last == {0: 1, 2: 3}
    assert uses.order == [2, 0], "sets in the order the epoch first uses them"
    assert [uses.get(2, i) for i in range(-1, 6)] == [0, 1, 0, 0, 2, 0, 0] and uses.get(1, 0) == 0
    assert uses.left_from(2, 1) == 2 and uses.use(2, 3) == 1 and uses.use(2, 3) == 0 and uses.left_from(2, 1) == 0
    assert RowUses([], [4]).last == {} and RowUses([], [4]).order == []


def test_the_first_streamed_batch_waits_for_little_more_than_itself():
    from ssl4eo_zarr.loader.plan import stream_batches

    for seed in range(5):
        first = stream_batches([0, 1], [512, 512], batch_size=64, buffer=64, shuffle=True, seed=seed, epoch=0,
                               drop_last=False)[0]
        # A full buffer first would need 127 members read; a batch can never need fewer than 64.
        assert 64 <= max(i for _f, i in first.rows) + 1 <= 78


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=9), st.integers(1, 4), st.integers(1, 3),
       st.one_of(st.none(), st.integers(1, 17)), st.integers(1, 3), st.booleans(), st.booleans(),
       st.sampled_from([None, "two", "mixed"]), st.booleans())
def test_one_workers_plan_is_the_one_a_whole_plan_gives_it(counts, world, workers, batch_size, mix, drop_last, stream,
                                                           subsets, sparse):
    from ssl4eo_zarr.loader.plan import batch_count

    if stream and batch_size is None:
        batch_size = 5
    groups = None if subsets is None or not stream else [f % 2 for f in range(len(counts))]
    probs = [0.7, 0.3] if subsets == "mixed" and stream else None
    rows = [list(range(0, c, 2)) for c in counts] if sparse else None
    kw = dict(seed=3, epoch=1, world_size=world, num_workers=workers, batch_size=batch_size, mix=mix,
              drop_last=drop_last, buffer=6 if stream else None, rows=rows, groups=groups, probs=probs)
    for rank in range(world):
        whole = epoch_plan(counts, rank=rank, **kw)
        for w in range(workers):
            assert epoch_plan(counts, rank=rank, only=w, **kw)[w] == whole[w]
    files = list(range(len(counts)))
    planned = epoch_plan(counts, rank=0, **{**kw, "world_size": 1, "num_workers": 1})[0]
    assert batch_count(files, counts, batch_size=batch_size, drop_last=drop_last, rows=rows,
                       groups=groups) == len(planned)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=9), st.integers(1, 4), st.integers(1, 3),
       st.one_of(st.none(), st.integers(1, 17)), st.booleans(), st.booleans(), st.booleans())
def test_the_epoch_length_is_counted_as_the_plan_makes_it(counts, world, workers, batch_size, drop_last, stream,
                                                          subsets):
    from ssl4eo_zarr.loader.plan import epoch_length

    if stream and batch_size is None:
        batch_size = 4
    groups = [f % 3 for f in range(len(counts))] if subsets and stream else None
    kw = dict(seed=5, epoch=2, world_size=world, num_workers=workers, batch_size=batch_size, drop_last=drop_last,
              buffer=5 if stream else None, groups=groups)
    for rank in range(world):
        assert epoch_length(counts, rank=rank, **kw) == sum(len(w) for w in epoch_plan(counts, rank=rank, **kw))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=9), st.integers(1, 20), st.integers(1, 30),
       st.integers(1, 5))
def test_shards_read_several_at_once_deliver_everything_once_within_the_buffer(counts, batch_size, buffer, spread):
    from ssl4eo_zarr.loader.plan import _spread, stream_batches

    files = list(range(len(counts)))
    batches = stream_batches(files, counts, batch_size=batch_size, buffer=buffer, shuffle=True, seed=1, epoch=0,
                             drop_last=False, spread=spread)
    delivered = [r for b in batches for r in b.rows]
    read = _spread(files, counts, None, spread)
    assert sorted(read) == sorted(delivered) == [(f, i) for f in files for i in range(counts[f])]
    for f in files:  # each shard is still read front to back
        assert [i for g, i in read if g == f] == list(range(counts[f]))
    position = {r: k for k, r in enumerate(read)}
    reached = -1
    for k, row in enumerate(delivered):
        reached = max(reached, position[row])
        assert reached + 1 - k <= max(buffer, 1)


def test_the_first_batch_draws_from_several_shards():
    from ssl4eo_zarr.loader.plan import stream_batches

    first = stream_batches([3, 1, 4, 0, 2], [512] * 5, batch_size=64, buffer=64, shuffle=True, seed=0, epoch=0,
                           drop_last=False, spread=4)[0]
    assert {f for f, _i in first.rows} == {3, 1, 4, 0}, "four shards read at once, the fifth after them"
    assert max(i for _f, i in first.rows) < 78 // 4 + 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=9), st.integers(1, 20), st.integers(1, 30),
       st.integers(1, 5), st.integers(0, 3))
def test_subsets_read_several_shards_at_once_and_deliver_batches_as_their_locations_are_read(
        counts, batch_size, buffer, spread, seed):
    """TerraMesh: Major TOM and SSL4EO-S12 shards in one worker, read four at a time whatever their subset; each
    subset's buffer takes its locations in that order, a batch never mixes subsets, and batches go out in the
    order their last location is read (so the reader holds few members read ahead of their batch)."""
    from ssl4eo_zarr.loader.plan import _spread, stream_batches

    files = list(range(len(counts)))[::-1]
    groups = [(f * 7) % 3 % 2 for f in range(len(counts))]
    batches = stream_batches(files, counts, batch_size=batch_size, buffer=buffer, shuffle=True, seed=seed, epoch=0,
                             drop_last=False, groups=groups, spread=spread)
    read = _spread(files, counts, None, spread)
    delivered = [r for b in batches for r in b.rows]
    assert sorted(delivered) == sorted(read)
    assert all(len({groups[f] for f, _i in b.rows}) == 1 for b in batches)
    position = {r: k for k, r in enumerate(read)}
    last = [max(position[r] for r in b.rows) for b in batches]
    if len({groups[f] for f in files}) > 1:  # (one subset alone: the buffer's own order)
        assert last == sorted(last)


def test_a_terramesh_workers_first_batch_draws_from_several_shards():
    from ssl4eo_zarr import schema
    from ssl4eo_zarr.loader.plan import epoch_plan

    corpus = schema.get_corpus("terramesh")
    counts, groups = [], []
    for g, sub in enumerate(corpus.subsets):
        counts += sub.counts("val")
        groups += [g] * len(sub.counts("val"))
    plan = epoch_plan(counts, seed=0, epoch=0, rank=0, world_size=1, num_workers=1, batch_size=64, buffer=64,
                      groups=groups, spread=4)[0]
    assert len({f for f, _i in plan[0].rows}) == 4
    assert sum(len(b.rows) for b in plan) == sum(counts) == 89_088


def test_a_streamed_plans_batches_are_views_that_read_as_tuples_and_pickle_alone():
    import pickle

    from ssl4eo_zarr.loader.plan import RowSlice, stream_batches

    batches = stream_batches([0, 1], [300, 300], batch_size=64, buffer=64, shuffle=True, seed=0, epoch=0,
                             drop_last=True, spread=2)
    assert len(batches) == 600 // 64 and all(isinstance(b.rows, RowSlice) and len(b.rows) == 64 for b in batches)
    rows = batches[3].rows
    as_tuple = tuple(rows)
    assert rows == as_tuple and as_tuple == rows and hash(rows) == hash(as_tuple)
    assert rows[0] == as_tuple[0] and rows[-1] == as_tuple[-1] and rows[2:5] == as_tuple[2:5]
    assert all(type(f) is int and type(i) is int for f, i in rows)
    with pytest.raises(IndexError):
        rows[64]
    copy = pickle.loads(pickle.dumps(batches[3]))
    assert copy == batches[3] and len(pickle.dumps(batches[3])) < 4096, "only the batch's own rows travel"
