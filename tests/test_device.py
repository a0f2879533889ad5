"""Batches onto a device with DeviceFeeder: the same values as normalising a plain copy; on CUDA, copied from the
workers' arenas page-locked in place, each arena held until its copies have finished."""

import pytest
import torch
from torch.utils.data import DataLoader

import ssl4eo_zarr as sz
from ssl4eo_zarr.loader import DeviceFeeder, normalize

MODS = ("S2L1C", "S2L2A", "S1GRD")
KW = {"split": "val", "batch_size": 5, "timestamps": "all", "seed": 7}


def _reference(root, device):
    ds = sz.ChunkDataset(root, buffer_slots=0, **KW)
    return [normalize({m: b[m] for m in MODS}, device=device) for b in DataLoader(ds, batch_size=None, num_workers=2)]


def test_feeder_on_the_cpu_normalises_like_normalize(root):
    feed = DeviceFeeder("cpu", normalize=True)
    got = [feed(b) for b in DataLoader(sz.ChunkDataset(root, **KW), batch_size=None, num_workers=2)]
    want = _reference(root, "cpu")
    assert len(got) == len(want)
    for a, b in zip(got, want):
        for m in MODS:
            assert a[m].dtype == torch.float32 and torch.equal(a[m], b[m])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_copies_come_from_arenas_pinned_in_place_and_never_see_them_reused(root):
    from ssl4eo_zarr.loader import pool

    want = _reference(root, "cuda")
    ds = sz.ChunkDataset(root, buffer_slots=2, **KW)
    feed = DeviceFeeder("cuda", normalize=True)
    for _epoch in range(2):  # new workers each epoch: the arenas of the ended ones are unregistered
        got = [feed(b) for b in DataLoader(ds, batch_size=None, num_workers=2)]  # every device batch kept
        feed.synchronize()
        assert len(got) == len(want)
        for a, b in zip(got, want):
            for m in MODS:
                assert torch.equal(a[m], b[m]), "a copy read an arena its worker had reused"
        assert pool._REGISTERED, "arenas were page-locked in place"
        mapped = {s.data_ptr() for kept in pool._MAPPED.values() for s in kept}
        assert set(pool._REGISTERED) <= mapped


def test_arenas_of_ended_workers_are_let_go_without_new_workers(root):
    """After an epoch with non-persistent workers and no epoch after it, the consumer's kept mappings of their
    arenas (pinned ones unpinned) go when asked, not only when a new worker's first batch arrives."""
    from ssl4eo_zarr.loader import pool

    pool.release_ended_workers()
    batches = list(DataLoader(sz.ChunkDataset(root, **KW), batch_size=None, num_workers=1))
    pids = {b._token[3] for b in batches if getattr(b, "_token", None) is not None}
    assert pids and any(k[0] in pids for k in pool.kept_mappings())
    feed = DeviceFeeder("cpu")
    feed.synchronize()  # on the CPU nothing was pinned: mappings stay until released explicitly
    assert pool.release_ended_workers() >= 1
    assert not any(k[0] in pids for k in pool.kept_mappings())
    assert all(torch.equal(b["S2L2A"], b["S2L2A"].clone()) for b in batches), "held batches still readable"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_copies_to_a_device_that_is_not_current_are_waited_for(root):
    """The copy-done event is recorded on the target device's stream: with cuda:0 current and batches fed to
    cuda:1, a held arena is never handed back before its copy to cuda:1 finished."""
    want = _reference(root, "cuda:1")
    ds = sz.ChunkDataset(root, buffer_slots=2, **KW)
    feed = DeviceFeeder("cuda:1", normalize=True)
    torch.cuda.set_device(0)
    got = [feed(b) for b in DataLoader(ds, batch_size=None, num_workers=2)]
    feed.synchronize()
    for a, b in zip(got, want):
        for m in MODS:
            assert a[m].device == torch.device("cuda:1") and torch.equal(a[m], b[m])
