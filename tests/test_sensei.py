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
    # The package's own 4-class order (its training class map and its "4-class" post-processing): clear, thin,
    # thick, shadow.
    assert cloud.sensei_classes(four).ravel().tolist() == [CloudClass.LAND, CloudClass.THIN_CLOUD,
                                                           CloudClass.THICK_CLOUD, CloudClass.CLOUD_SHADOW]
    seven = np.zeros((7, 1, 7), np.float32)
    seven[np.arange(7), 0, np.arange(7)] = 1
    # The package's 7 -> 4 reduction keeps channels 3, 4, 5 as its classes 1, 2, 3: both tables agree.
    reduced = np.concatenate([seven[:3].sum(0, keepdims=True), seven[3:6]])
    assert (cloud.sensei_classes(reduced)[0, 3:6] == cloud.sensei_classes(seven)[0, 3:6]).all()
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


def _hub_layout(root, *, sensei_entry="sensei-configs/sensei_v2.yaml", model="SEnSeIv2-SegFormerB2-test"):
    """A folder laid out as get_model_files downloads it (plus segformer/), with a Segformer model config."""
    import yaml

    folder = root / "full-models" / model
    folder.mkdir(parents=True)
    (root / "sensei-configs").mkdir()
    (root / "sensei-configs" / "sensei_v2.yaml").write_text("descriptors: {style: SEnSeIv2}\n")
    (root / "segformer" / "nvidia--mit-b2").mkdir(parents=True)
    (root / "segformer" / "nvidia--mit-b2" / "config.json").write_text("{}")
    config = {"MODEL_TYPE": "Segformer", "SEGFORMER_CONFIG": "nvidia/mit-b2", "SEnSeIv2": sensei_entry,
              "CLASSES": 7, "PATCH_SIZE": 16}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return str(folder / "config.yaml")


def test_model_configs_resolve_to_local_files(tmp_path):
    """The front end's config and the SegFormer config are found in the offline layout, whatever the entries
    say, and the resolved copy names only local files."""
    import yaml

    hub = tmp_path / "hf_models"
    config = _hub_layout(hub)
    resolved = cloud.resolve_model_config(config, out_dir=str(tmp_path / "out"))
    got = yaml.safe_load(open(resolved))
    assert got["SEnSeIv2"] == str(hub / "sensei-configs" / "sensei_v2.yaml")
    assert got["SEGFORMER_CONFIG"] == str(hub / "segformer" / "nvidia--mit-b2")
    assert got["CLASSES"] == 7 and got["MODEL_TYPE"] == "Segformer"
    assert cloud.resolve_model_config(resolved) == resolved, "nothing left to resolve"


def test_a_config_elsewhere_uses_the_sensei_dir(tmp_path, monkeypatch):
    import shutil

    import yaml

    hub = tmp_path / "hf_models"
    config = _hub_layout(hub, sensei_entry="some/where/else/sensei_v2.yaml")
    alone = tmp_path / "mine" / "config.yaml"
    alone.parent.mkdir()
    shutil.copy(config, alone)
    with pytest.raises(BuildError, match="sensei_v2.yaml"):
        cloud.resolve_model_config(str(alone))
    monkeypatch.setenv(cloud.ENV_DIR, str(hub))
    got = yaml.safe_load(open(cloud.resolve_model_config(str(alone), out_dir=str(tmp_path / "out"))))
    assert got["SEnSeIv2"] == str(hub / "sensei-configs" / "sensei_v2.yaml")
    assert os.path.isdir(got["SEGFORMER_CONFIG"])


def test_the_descriptor_front_end_runs_offline(tmp_path, monkeypatch):
    """A model config with its SEnSeIv2 entry (the descriptor front end) loads from local files alone and
    masks an L1C patch: the descriptors reach the model."""
    pytest.importorskip("senseiv2.inference", reason="SEnSeIv2 is not installed (not on the package index; "
                                                     "see docs/build.md)")
    import torch
    import yaml
    from senseiv2 import models

    hub = tmp_path / "hf_models"
    (hub / "sensei-configs").mkdir(parents=True)
    front = {"descriptors": {"style": "SEnSeIv2", "N_embeddings": 8, "final_size": 20},
             "blocks": [{"type": "GLOBAL_STATS", "percentiles": [0.1, 0.5, 0.9]},
                        {"type": "FCL", "layer_sizes": [16, 16], "skips": False},
                        {"type": "BAND_EMBEDDING", "embedding_dims": 8, "head_layer_sizes": [16], "skips_heads": False,
                         "normalize": False}]}
    (hub / "sensei-configs" / "sensei_small.yaml").write_text(yaml.safe_dump(front))
    folder = hub / "full-models" / "tiny"
    folder.mkdir(parents=True)
    config = {"MODEL_TYPE": "NN", "SEnSeIv2": "hf_models/sensei-configs/sensei_small.yaml", "CLASSES": 7,
              "PATCH_SIZE": 16, "NUM_CHANNELS": 13}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    resolved = yaml.safe_load(open(cloud.resolve_model_config(str(folder / "config.yaml"), out_dir=str(tmp_path))))
    torch.manual_seed(0)
    model = models.load_model(resolved, device="cpu")
    assert model.senseiv2 is not None
    torch.save(model.state_dict(), folder / "weights.pt")
    masker = cloud.SenseiMasker(str(folder / "config.yaml"), str(folder / "weights.pt"))
    l1c = np.random.default_rng(1).integers(1000, 5000, (13, 16, 16)).astype(np.int16)
    mask = masker(l1c)
    assert mask.shape == (16, 16) and mask.dtype == np.uint8 and mask.max() <= max(CloudClass)


def test_a_segformer_model_loads_with_the_hub_unreachable(tmp_path, monkeypatch):
    """MODEL_TYPE Segformer names a hub id (nvidia/mit-b0): with HF_HUB_OFFLINE the package finds it only
    through the resolved local folder."""
    pytest.importorskip("senseiv2.inference", reason="SEnSeIv2 is not installed (not on the package index; "
                                                     "see docs/build.md)")
    import huggingface_hub.constants
    import torch
    import yaml
    from senseiv2 import models
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: set it where it is kept
    hub = tmp_path / "hf_models"
    small = SegformerConfig(num_channels=13, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 1],
                            decoder_hidden_size=16, num_labels=7)
    SegformerForSemanticSegmentation(small).save_pretrained(hub / "segformer" / "nvidia--mit-b0")
    folder = hub / "full-models" / "segformer-tiny"
    folder.mkdir(parents=True)
    config = {"MODEL_TYPE": "Segformer", "SEGFORMER_CONFIG": "nvidia/mit-b0", "CLASSES": 7, "PATCH_SIZE": 32,
              "NUM_CHANNELS": 13}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(BuildError, match="offline"):
        cloud.SenseiMasker(_moved(folder, tmp_path), str(tmp_path / "missing.pt"))
    resolved = yaml.safe_load(open(cloud.resolve_model_config(str(folder / "config.yaml"), out_dir=str(tmp_path))))
    torch.manual_seed(0)
    torch.save(models.load_model(resolved, device="cpu").state_dict(), folder / "weights.pt")
    masker = cloud.SenseiMasker(str(folder / "config.yaml"), str(folder / "weights.pt"))
    l1c = np.random.default_rng(2).integers(1000, 5000, (13, 32, 32)).astype(np.int16)
    assert masker(l1c).shape == (32, 32)


def _moved(folder, tmp_path):
    """The config alone in a folder of its own: no layout around it, so the hub id stays unresolved."""
    import shutil

    alone = tmp_path / "alone"
    alone.mkdir()
    return shutil.copy(folder / "config.yaml", alone / "config.yaml")
