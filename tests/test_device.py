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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent GPU machine)")
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
