import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import ssl4eo_zarr as sz
from ssl4eo_zarr import CorruptFileError, schema
from ssl4eo_zarr.loader import ChunkDataset, Compose, RandomCrop, RandomD4
from ssl4eo_zarr.storage import ZipArchive

from .helpers import chunk_path


def _run(ds, workers=2):
    return list(DataLoader(ds, batch_size=None, num_workers=workers))


@pytest.fixture(scope="module")
def full(root):
    """The whole val split as numpy, keyed by sample id."""
    ds = sz.open_dataset(root).load()
    index = {str(s): i for i, s in enumerate(ds["sample"].values)}
    return ds, index


def _rows(batch):
    return list(batch["sample"])


@pytest.mark.parametrize("batch_size", [None, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_exactly_once_over_two_ranks_and_two_workers(odd_root, batch_size, drop_last):
    per_rank = []
    for rank in range(2):
        ds = ChunkDataset(odd_root, split="train", rank=rank, world_size=2, batch_size=batch_size, timestamps=0,
                          drop_last=drop_last, return_metadata=True, seed=5, num_workers=2)
        batches = _run(ds)
        assert len(batches) == len(ds)
        per_rank.append(batches)
    assert len(per_rank[0]) == len(per_rank[1]), "DDP needs the same number of batches on every rank"
    seen = Counter(s for batches in per_rank for b in batches for s in b["sample"])
    all_ids = set(str(s) for s in sz.open_dataset(odd_root)["sample"].values)
    assert len(all_ids) == 37
    if drop_last:
        assert max(seen.values()) == 1 and set(seen) <= all_ids
    else:
        assert set(seen) == all_ids
        repeated = [s for s, c in seen.items() if c > 1]
        assert len(repeated) <= 8, "padding repeats at most one file per rank"


def test_same_seed_same_order_new_epoch_new_order(odd_root):
    def order(epoch, seed=1):
        ds = ChunkDataset(odd_root, split="train", batch_size=4, timestamps=1, seed=seed, return_metadata=True)
        ds.set_epoch(epoch)
        return [tuple(b["sample"]) for b in _run(ds)]

    first = order(0)
    assert order(0) == first
    other = order(1)
    assert other != first
    assert sorted(s for b in other for s in b) == sorted(s for b in first for s in b)
    assert order(0, seed=2) != first


def test_batches_hold_the_right_pixels_and_metadata(root, full):
    ds_full, index = full
    ds = ChunkDataset(root, split="val", batch_size=5, modalities=("S2L1C", "S2L2A", "S1GRD", "S2RGB"),
                      return_metadata=True, seed=3)
    batches = _run(ds)
    assert sum(len(b["sample"]) for b in batches) == 42
    for b in batches:
        rows = [index[s] for s in b["sample"]]
        for mod in schema.CHUNK_MODALITIES:
            assert b[mod].shape == (len(rows), 4, schema.MODALITIES[mod].n_bands, 32, 32)
            assert b[mod].dtype == getattr(torch, str(schema.MODALITIES[mod].dtype))
            np.testing.assert_array_equal(b[mod].numpy(), ds_full[mod].values[rows])
        np.testing.assert_array_equal(b["cloud_mask"].numpy(), ds_full["cloud_mask"].values[rows])
        np.testing.assert_array_equal(b["center_lat"].numpy(), ds_full["center_lat"].values[rows])
        np.testing.assert_array_equal(b["crs"].numpy(), ds_full["crs"].values[rows])
        np.testing.assert_array_equal(b["time_"].numpy(), ds_full["time_S2L2A"].values[rows].astype(np.int64))
        np.testing.assert_array_equal(b["time_S1GRD"].numpy(), ds_full["time_S1GRD"].values[rows].astype(np.int64))


def test_whole_chunks_and_the_partial_last_chunk(root, full):
    ds_full, index = full
    batches = _run(ChunkDataset(root, split="val", return_metadata=True, shuffle=False))
    assert sorted(len(b["sample"]) for b in batches) == [10, 16, 16]
    for b in batches:
        rows = [index[s] for s in b["sample"]]
        np.testing.assert_array_equal(b["S2L2A"].numpy(), ds_full["S2L2A"].values[rows])


def test_larger_batches_combine_chunks(root):
    batches = _run(ChunkDataset(root, split="val", batch_size=40, timestamps=0, return_metadata=True), workers=0)
    assert [len(b["sample"]) for b in batches] == [40, 2]
    assert batches[0]["S2L1C"].shape == (40, 13, 32, 32)


@pytest.mark.parametrize("timestamps, shape", [(2, (13, 32, 32)), ([0, 3], (2, 13, 32, 32))])
def test_timestamp_selection(root, full, timestamps, shape):
    ds_full, index = full
    for b in _run(ChunkDataset(root, split="val", timestamps=timestamps, return_metadata=True)):
        rows = [index[s] for s in b["sample"]]
        assert b["S2L1C"].shape[1:] == shape
        np.testing.assert_array_equal(b["S2L1C"].numpy(), ds_full["S2L1C"].values[rows][:, timestamps])
        np.testing.assert_array_equal(b["S1GRD"].numpy(), ds_full["S1GRD"].values[rows][:, timestamps])


def test_random_timestamp_is_one_season_per_location_for_all_modalities(root, full):
    ds_full, index = full
    seasons = Counter()
    for b in _run(ChunkDataset(root, split="val", timestamps="random", batch_size=7, return_metadata=True)):
        assert b["S2L2A"].shape[1:] == (12, 32, 32)
        for j, s in enumerate(b["sample"]):
            t = int(b["timestamp"][j])
            seasons[t] += 1
            for mod in ("S2L1C", "S2L2A", "S1GRD"):
                np.testing.assert_array_equal(b[mod][j].numpy(), ds_full[mod].values[index[s], t])
            np.testing.assert_array_equal(b["cloud_mask"][j].numpy(), ds_full["cloud_mask"].values[index[s], t])
    assert len(seasons) == 4


def test_only_the_needed_chunks_are_read(root, monkeypatch):
    reads = []
    read, read_into = ZipArchive.read, ZipArchive.read_into

    def counting(self, name, **kw):
        reads.append(name)
        return read(self, name, **kw)

    def counting_into(self, name, scratch, **kw):
        reads.append(name)
        return read_into(self, name, scratch, **kw)

    monkeypatch.setattr(ZipArchive, "read", counting)
    monkeypatch.setattr(ZipArchive, "read_into", counting_into)
    list(ChunkDataset(root, split="val", timestamps=1))
    chunks = [n for n in reads if n.startswith("bands/")]
    assert chunks and all(n.split("/")[1].split(".")[1] == "1" for n in chunks)
    assert len(chunks) == 3 * 3  # 3 files x 3 modalities, one timestamp each


def _locate(crop, image):
    h = crop.shape[-1]
    for y in range(image.shape[-2] - h + 1):
        for x in range(image.shape[-1] - h + 1):
            if np.array_equal(image[..., y:y + h, x:x + h], crop):
                return y, x
    return None


def test_random_crops_are_identical_across_modalities_and_timestamps(root, full):
    ds_full, index = full
    ds = ChunkDataset(root, split="val", batch_size=8, transform=RandomCrop(20), return_metadata=True, seed=4)
    offsets = set()
    for b in _run(ds):
        assert b["S2L2A"].shape[-2:] == (20, 20) and b["cloud_mask"].shape[-2:] == (20, 20)
        for j, s in enumerate(b["sample"]):
            i = index[s]
            pos = _locate(b["S2L2A"][j].numpy(), ds_full["S2L2A"].values[i])
            assert pos is not None
            offsets.add(pos)
            y, x = pos
            np.testing.assert_array_equal(b["S1GRD"][j].numpy(), ds_full["S1GRD"].values[i][..., y:y + 20, x:x + 20])
            np.testing.assert_array_equal(b["cloud_mask"][j].numpy(),
                                          ds_full["cloud_mask"].values[i][..., y:y + 20, x:x + 20])
    assert len(offsets) > 5, "crop positions must vary between locations"


def test_d4_is_applied_identically_across_modalities(root, full):
    ds_full, index = full
    ds = ChunkDataset(root, split="val", batch_size=8, transform=Compose([RandomD4()]), return_metadata=True)
    kinds = set()
    for b in _run(ds, workers=0):
        for j, s in enumerate(b["sample"]):
            i = index[s]
            found = None
            for k in range(8):
                def d4(a, k=k):
                    a = np.rot90(a, k % 4, axes=(-2, -1))
                    return a[..., ::-1] if k >= 4 else a

                if all(np.array_equal(b[m][j].numpy(), d4(ds_full[m].values[i])) for m in ("S2L1C", "S2L2A", "S1GRD")):
                    found = k
                    break
            assert found is not None
            kinds.add(found)
    assert len(kinds) > 3


def test_normalised_float32(root, full):
    ds_full, index = full
    for b in _run(ChunkDataset(root, split="val", normalize=True, timestamps=0, return_metadata=True), workers=0):
        rows = [index[s] for s in b["sample"]]
        assert b["S2L2A"].dtype == torch.float32
        mean, std = schema.S2L2A.stats()
        expected = (ds_full["S2L2A"].values[rows][:, 0].astype(np.float32) - mean[:, None, None].astype(np.float32)) \
            / std[:, None, None].astype(np.float32)
        np.testing.assert_allclose(b["S2L2A"].numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_epoch_exactly(odd_root, workers):
    def make():
        ds = ChunkDataset(odd_root, split="train", batch_size=3, timestamps=0, seed=9, return_metadata=True,
                          num_workers=workers)
        ds.set_epoch(2)
        return ds

    full_run = [tuple(b["sample"]) for b in _run(make(), workers)]
    ds = make()
    taken = []
    for k, b in enumerate(DataLoader(ds, batch_size=None, num_workers=workers)):
        taken.append(tuple(b["sample"]))
        if k == 4:
            break
    state = ds.state_dict() if workers == 0 else ds.state_dict(batches=len(taken))
    fresh = make()
    fresh.load_state_dict(state)
    rest = [tuple(b["sample"]) for b in _run(fresh, workers)]
    assert taken + rest == full_run


def test_a_resumed_epoch_skips_once_with_persistent_workers(odd_root):
    """Persistent workers keep their own copy of the dataset: the resume applies to the epoch it was saved in
    only, not again to the epochs after it (nor when the same epoch is iterated again)."""
    def make():
        return ChunkDataset(odd_root, split="train", batch_size=3, timestamps=0, seed=9, return_metadata=True,
                            num_workers=2)

    def epochs(ds, which):
        loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
        out = []
        for e in which:
            ds.set_epoch(e)
            out.append([tuple(b["sample"]) for b in loader])
        return out

    full = epochs(make(), [2, 3, 3])
    resumed = make()
    resumed.load_state_dict({**make().state_dict(batches=4), "epoch": 2})
    rest = epochs(resumed, [2, 3, 3])
    assert full[0][4:] == rest[0] and rest[1] == full[1] and rest[2] == full[2]


def test_damaged_file_raises_naming_it_from_workers(root_copy):
    bad = chunk_path(root_copy, "S2L1C", 2)
    data = bytearray(open(bad, "rb").read())
    open(bad, "wb").write(bytes(data[: len(data) // 3]))
    with pytest.raises(Exception, match="seasonal_data_000002") as info:
        _run(ChunkDataset(root_copy, split="val"))
    assert isinstance(info.value, (CorruptFileError, RuntimeError))


def test_damaged_file_skipped_when_asked(root_copy):
    bad = chunk_path(root_copy, "S1GRD", 1)
    open(bad, "wb").write(b"\0" * 100)
    ds = ChunkDataset(root_copy, split="val", return_metadata=True, on_error="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(ds)
    assert sum(len(b["sample"]) for b in batches) == 26  # 16 + 10: the damaged 16-location chunk is skipped
    assert any("seasonal_data_000001" in str(w.message) for w in caught)
    assert len(ds.skipped) == 1 and "seasonal_data_000001" in ds.skipped[0]
    assert len(_run(ChunkDataset(root_copy, split="val", on_error="skip"))) == 2


def test_batches_from_workers_lie_in_the_workers_shared_arenas(root):
    """Zero copies: a batch's tensors are the worker's shared memory, mapped once in this process (each batch
    holds it through a storage of its own, so ``is_shared()`` reads False; see loader/pool.py)."""
    from ssl4eo_zarr.loader import pool

    leased = 0
    for b in _run(ChunkDataset(root, split="val")):
        if getattr(b, "_token", None) is None:
            assert b["S2L2A"].is_shared()  # fresh shared memory, passed as it came
            continue
        leased += 1
        _table, _row, slot, pid, _generation = b._token
        arena = {s.data_ptr() for s in pool._MAPPED[pid, slot]}
        assert b["S2L2A"].untyped_storage().data_ptr() in arena
    assert leased


def test_bad_arguments_are_refused(root):
    with pytest.raises(ValueError, match="timestamp indices must be in 0..3"):
        ChunkDataset(root, timestamps=7)
    with pytest.raises(ValueError, match="on_error"):
        ChunkDataset(root, on_error="ignore")
    # A modality the chunk files do not hold is named, with the folders that exist.
    with pytest.raises(sz.DatasetNotFoundError, match=r"\['S3'\] missing .*S2L2A"):
        ChunkDataset(root, modalities=("S3",))
    with pytest.raises(ValueError, match="batch_size"):
        ChunkDataset(root, batch_size=0)


def test_flipped_bytes_inside_a_chunk_never_pass_silently(root_copy):
    import zipfile

    bad = chunk_path(root_copy, "S2L2A", 1)
    with zipfile.ZipFile(bad) as zf:
        info = zf.getinfo("bands/0.2.0.0.0")
    data = bytearray(open(bad, "rb").read())
    start = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[start: start + 4] = bytes(b ^ 0x5A for b in data[start: start + 4])
    open(bad, "wb").write(bytes(data))
    with pytest.raises(CorruptFileError, match="CRC-32 mismatch") as err:
        list(ChunkDataset(root_copy, split="val", timestamps=2))
    assert "seasonal_data_000001" in str(err.value) and "bands/0.2.0.0.0" in str(err.value)


def test_resume_under_torchdata_stateful_dataloader(odd_root):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")

    def make():
        return ChunkDataset(odd_root, split="train", batch_size=3, timestamps=0, seed=4, return_metadata=True)

    full_run = [tuple(b["sample"]) for b in stateful.StatefulDataLoader(make(), batch_size=None, num_workers=2)]
    loader = stateful.StatefulDataLoader(make(), batch_size=None, num_workers=2)
    taken = []
    for k, b in enumerate(loader):
        taken.append(tuple(b["sample"]))
        if k == 4:
            state = loader.state_dict()
            break
    resumed = stateful.StatefulDataLoader(make(), batch_size=None, num_workers=2)
    resumed.load_state_dict(state)
    rest = [tuple(b["sample"]) for b in resumed]
    assert taken + rest == full_run


@pytest.mark.parametrize(("epochs", "used", "dropped"), [([0, 1, 2], 2, 0), ([0, 2, 3, 3], 0, 4),
                                                         (None, 2, 0), ([0, 1, 2, 5], 2, 2)])
def test_the_next_epochs_first_batch_read_ahead_changes_nothing(root, epochs, used, dropped):
    """From its second epoch on, a persistent worker reads the predicted next epoch's first batch when it
    finishes one (``set_epoch`` each epoch: e + 1; never called, ``None`` here: the same epoch). The batches
    are the same as without it, also when another epoch comes (the prepared batch is dropped); the counts say
    which happened (2 workers)."""
    def run(prepare):
        ds = sz.ChunkDataset(root, split="val", batch_size=5, timestamps="all", seed=9, return_metadata=True,
                             prepare_next_epoch=prepare)
        loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
        out = []
        for epoch in epochs or [0, 0, 0]:
            if epochs is not None:
                ds.set_epoch(epoch)
            out.append([(b["sample"], b["S2L2A"].clone(), b["S1GRD"].clone()) for b in loader])
        return out, ds.read_ahead

    (with_prepare, counts), (without, none) = run(None), run(False)
    assert counts == {"used": used, "dropped": dropped} and none == {"used": 0, "dropped": 0}
    for a, b in zip(with_prepare, without):
        assert [x[0] for x in a] == [x[0] for x in b]
        assert all(torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) for x, y in zip(a, b))


def test_read_ahead_waits_for_a_second_epoch_and_predicts_the_step():
    from ssl4eo_zarr.loader.dataset import next_epoch

    assert next_epoch([]) is None and next_epoch([3]) is None, "one epoch served: maybe not a persistent worker"
    assert next_epoch([0, 1]) == 2 and next_epoch([4, 4]) == 4 and next_epoch([0, 2]) == 4
