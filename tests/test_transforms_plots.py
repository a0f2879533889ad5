"""Every public transform and plot helper, on small tensors and arrays."""

import numpy as np
import pytest
import torch

import ssl4eo_zarr as sz
from ssl4eo_zarr import schema
from ssl4eo_zarr.loader import CenterCrop, Compose, Normalize, RandomCrop
from ssl4eo_zarr.plot import S1_VH_RANGE, S1_VV_RANGE, s1_pseudocolor


def _batch():
    g = torch.Generator().manual_seed(0)
    return {"S2L2A": torch.randint(1000, 5000, (2, 4, 12, 10, 10), generator=g, dtype=torch.int16),
            "S1GRD": (torch.rand((2, 4, 2, 10, 10), generator=g) * -30).half(),
            "cloud_mask": torch.randint(0, 7, (2, 4, 10, 10), generator=g, dtype=torch.uint8),
            "sample": ["0000001", "0000002"]}


def test_center_crop_takes_the_middle_of_every_image():
    batch = _batch()
    out = CenterCrop(4)(batch)
    for key in ("S2L2A", "S1GRD", "cloud_mask"):
        assert out[key].shape[-2:] == (4, 4)
        assert torch.equal(out[key], batch[key][..., 3:7, 3:7])
    assert out["sample"] == batch["sample"]
    with pytest.raises(ValueError, match="does not fit"):
        CenterCrop(11)(batch)


@pytest.mark.parametrize("s2_offset", [True, False])
def test_normalize_uses_the_published_statistics(s2_offset):
    batch = _batch()
    if not s2_offset:
        batch["S2L2A"] = batch["S2L2A"] - 1000
    out = Normalize(s2_offset=s2_offset)(batch)
    mean, std = schema.S2L2A.stats(with_offset=True)
    expect = (_batch()["S2L2A"].double() - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    assert out["S2L2A"].dtype == torch.float32
    torch.testing.assert_close(out["S2L2A"].double(), expect, rtol=1e-5, atol=1e-5)
    assert out["cloud_mask"].dtype == torch.uint8, "classes are not images to standardise"
    s1_mean, s1_std = schema.S1GRD.stats()
    torch.testing.assert_close(out["S1GRD"][:, :, 0].double(),
                               (batch["S1GRD"][:, :, 0].double() - s1_mean[0]) / s1_std[0], rtol=1e-3, atol=1e-3)


def test_compose_passes_the_generator_and_keeps_modalities_aligned():
    batch = _batch()
    out = Compose([RandomCrop(6), CenterCrop(4)])(batch, torch.Generator().manual_seed(3))
    again = Compose([RandomCrop(6), CenterCrop(4)])(batch, torch.Generator().manual_seed(3))
    assert torch.equal(out["S2L2A"], again["S2L2A"]) and out["S2L2A"].shape[-2:] == (4, 4)
    for j in range(2):  # the same window in the cloud mask as in the image
        hits = [(y, x) for y in range(7) for x in range(7)
                if torch.equal(batch["cloud_mask"][j, :, y:y + 4, x:x + 4], out["cloud_mask"][j])]
        assert any(torch.equal(batch["S2L2A"][j, ..., y:y + 4, x:x + 4], out["S2L2A"][j]) for y, x in hits)


def test_s1_pseudocolor_scales_vv_and_vh_to_their_ranges():
    s1 = np.zeros((2, 3, 3), np.float32)
    s1[0] = S1_VV_RANGE[1]  # VV at the top of its range
    s1[1] = S1_VH_RANGE[0]  # VH at the bottom of its range
    s1[0, 0, 0] = np.nan
    rgb = s1_pseudocolor(s1)
    assert rgb.shape == (3, 3, 3) and rgb.dtype == np.float32
    assert np.allclose(rgb[1:, 1:, 1], 1.0) and np.allclose(rgb[..., 0], 0.0) and np.allclose(rgb[..., 2], 0.0)
    assert rgb[0, 0, 1] == 0.0, "NaN shows as black, not as an error"
    mid = s1_pseudocolor(np.full((2, 1, 1), -20.0, np.float32))
    assert np.isclose(mid[0, 0, 1], (-20 - S1_VV_RANGE[0]) / (S1_VV_RANGE[1] - S1_VV_RANGE[0]))


def test_package_dir_lists_the_lazy_names():
    names = dir(sz)
    assert {"ChunkDataset", "read_metadata", "shardfile", "builder", "convert", "views", "fetching"} <= set(names)


def test_to_layout_and_normalize_in_terratorchs_layout():
    from ssl4eo_zarr.loader import ToLayout, normalize

    batch = _batch()
    out = ToLayout("BCTHW")(batch)
    assert out["S2L2A"].shape == (2, 12, 4, 10, 10) and torch.equal(out["S2L2A"][:, 3, 1], batch["S2L2A"][:, 1, 3])
    assert out["cloud_mask"].shape == batch["cloud_mask"].shape
    assert ToLayout("BTCHW")(batch) is batch
    with pytest.raises(ValueError, match="layout"):
        ToLayout("TBCHW")
    a = normalize(batch)["S2L2A"]
    b = normalize(out, layout="BCTHW")["S2L2A"]
    torch.testing.assert_close(b, a.permute(0, 2, 1, 3, 4))
