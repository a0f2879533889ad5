"""SEnSeIv2 cloud masks: descriptors, the class table, and the adapter against the package's own model classes."""

import os

import numpy as np
import pytest

from ssl4eo_zarr import BuildError, CloudClass, schema
from ssl4eo_zarr.builder import cloud


def test_descriptors_follow_the_band_order():
    desc = cloud.sensei_descriptors()
    assert len(desc) == 13 and all(d["band_type"] == "TOA Reflectance" for d in desc)
    assert desc[schema.S2L1C.bands.index("B10")] == {"band_type": "TOA Reflectance", "min_wavelength": 1337.0,
                                                       "max_wavelength": 1413.0}
    assert [d["min_wavelength"] for d in cloud.sensei_descriptors(("B04", "B02"))] == [645.5, 446.0]
    with pytest.raises(ValueError, match="vv"):
        cloud.sensei_descriptors(("vv",))


def test_descriptors_equal_the_packages_own():
    constants = pytest.importorskip("senseiv2.constants", reason="SEnSeIv2 is not installed (not on the package "
                                                                   "index; see docs/build.md)")
    assert cloud.sensei_descriptors() == constants.SENTINEL2_DESCRIPTORS


def test_class_table_maps_seven_and_four_class_models():
    probs = np.zeros((7, 2, 4), np.float32)
    for k in range(7):
        probs[k, k // 4, k % 4] = 1.0
    probs[6, 1, 3] = 0.5
    got = cloud.sensei_classes(probs)
    assert got.dtype == np.uint8
    assert got.ravel()[:7].tolist() == list(range(7))  # the published order: channel k is class k
    four = np.zeros((4, 1, 4), np.float32)
    four[[0, 1, 2, 3], 0, [0, 1, 2, 3]] = 1
    assert cloud.sensei_classes(four).ravel().tolist() == [CloudClass.LAND, CloudClass.THICK_CLOUD,
                                                           CloudClass.THIN_CLOUD, CloudClass.CLOUD_SHADOW]
    with pytest.raises(BuildError, match="5 classes"):
        cloud.sensei_classes(np.zeros((5, 2, 2)))


def test_without_the_package_the_build_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(cloud.ENV_CONFIG, str(tmp_path / "missing.yaml"))
    monkeypatch.setenv(cloud.ENV_WEIGHTS, str(tmp_path / "missing.pt"))
    why = cloud.sensei_missing()
    assert why is not None and ("senseiv2" in why or "missing.yaml" in why)
    with pytest.raises(BuildError, match="SEnSeIv2 cannot run"):
        cloud.choose_source(str(tmp_path), "sensei")


def test_adapter_runs_a_small_random_model(tmp_path, monkeypatch):
    pytest.importorskip("senseiv2.inference", reason="SEnSeIv2 is not installed (not on the package index; "
                                                     "see docs/build.md)")
    import torch
    import yaml
    from senseiv2 import models

    config = {"MODEL_TYPE": "NN", "NUM_CHANNELS": 13, "CLASSES": 7, "PATCH_SIZE": 16}
    torch.manual_seed(0)
    model = models.load_model(dict(config), device="cpu")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    monkeypatch.setenv(cloud.ENV_CONFIG, str(tmp_path / "config.yaml"))
    monkeypatch.setenv(cloud.ENV_WEIGHTS, str(tmp_path / "weights.pt"))
    assert cloud.sensei_missing() is None
    masker = cloud.SenseiMasker()
    l1c = np.random.default_rng(0).integers(1000, 5000, (13, 24, 24)).astype(np.int16)
    mask = masker(l1c)
    assert mask.shape == (24, 24) and mask.dtype == np.uint8 and mask.max() <= max(CloudClass)
    # The same scores through the package directly, mapped with the table.
    probs = masker._mask((l1c.astype(np.float32) - 1000) / 10000, descriptors=cloud.sensei_descriptors(), stride=16)
    np.testing.assert_array_equal(mask, cloud.sensei_classes(probs))
    assert os.path.exists(tmp_path / "weights.pt")


def test_a_build_with_sensei_masks(tmp_path, monkeypatch):
    pytest.importorskip("senseiv2.inference", reason="SEnSeIv2 is not installed (not on the package index; "
                                                     "see docs/build.md)")
    pytest.importorskip("rasterio")
    import torch
    import yaml
    from senseiv2 import models

    import ssl4eo_zarr as sz
    from ssl4eo_zarr import synthetic
    from ssl4eo_zarr.builder import build_dataset

    config = {"MODEL_TYPE": "NN", "NUM_CHANNELS": 13, "CLASSES": 7, "PATCH_SIZE": 16}
    torch.manual_seed(1)
    torch.save(models.load_model(dict(config), device="cpu").state_dict(), tmp_path / "weights.pt")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv(cloud.ENV_CONFIG, str(tmp_path / "config.yaml"))
    monkeypatch.setenv(cloud.ENV_WEIGHTS, str(tmp_path / "weights.pt"))
    cloud._masker.cache_clear()
    synthetic.make_raw(str(tmp_path / "raw"), 3, size=24, seed=2)
    manifest = build_dataset(str(tmp_path / "raw"), str(tmp_path / "out"), size=24, workers=0, cloud_mask="sensei",
                             val_fraction=0.0)
    written = [e for e in manifest["locations"].values() if e["status"] == "written"]
    assert written and all(e.get("cloud_source") == "sensei" for e in written), written
    ds = sz.open_dataset(str(tmp_path / "out"), split="train")
    assert int(ds["cloud_mask"].max()) <= max(CloudClass)
