import os
import zipfile

import numpy as np

import ssl4eo_zarr as sz
from ssl4eo_zarr import CloudClass, geo, schema, synthetic

from .helpers import chunk_path


def test_demo_root_has_the_published_layout(root):
    assert sorted(os.listdir(os.path.join(root, "val"))) == sorted(schema.CHUNK_MODALITIES)
    with open(os.path.join(root, "splits", "ssl4eos12_val.txt")) as f:
        assert f.read().split() == [schema.chunk_file_name("val", i) for i in (1, 2, 3)]


def test_content_is_realistic(root):
    ds = sz.open_dataset(root).load()
    l2a = ds["S2L2A"].values
    assert 1000 <= np.percentile(l2a, 5) and np.percentile(l2a, 95) <= 11000
    s1 = ds["S1GRD"].values.astype(np.float32)
    assert -50 <= np.percentile(s1, 1) and np.percentile(s1, 99) <= 1
    assert np.median(s1[:, :, 0]) > np.median(s1[:, :, 1]), "VV is stronger than VH"
    assert set(np.unique(ds["cloud_mask"].values)) == set(map(int, CloudClass))
    # neighbouring pixels correlate: imagery, not white noise
    band = l2a[:, 0, 3].astype(np.float64)
    r = np.corrcoef(band[..., :-1].ravel(), band[..., 1:].ravel())[0, 1]
    assert r > 0.6
    for i in range(0, 42, 7):
        epsg, x, y = geo.patch_grid(float(ds["center_lat"][i]), float(ds["center_lon"][i]), size=32)
        assert epsg == int(ds["crs"][i])
        np.testing.assert_allclose(ds["x_"].values[i], x)
        np.testing.assert_allclose(ds["y_"].values[i], y)
    months = ds["time_S2L2A"].values.astype("datetime64[M]").astype(int) % 12 + 1
    assert {int(m) for m in np.unique(months[:, 1])} <= {5, 6, 7}


def test_compresses_like_imagery(root):
    with zipfile.ZipFile(chunk_path(root, "S2L2A")) as zf:
        info = zf.getinfo("bands/0.0.0.0.0")
    raw = 16 * 12 * 32 * 32 * 2
    assert 1.2 < raw / info.file_size < 6


def test_same_seed_same_data(tmp_path):
    a = synthetic.make_chunk(synthetic.sample_locations(3, seed=4), size=16, seed=4)
    b = synthetic.make_chunk(synthetic.sample_locations(3, seed=4), size=16, seed=4)
    for mod in a:
        np.testing.assert_array_equal(a[mod]["bands"].values, b[mod]["bands"].values)
