import numpy as np
import pytest

from ssl4eo_zarr import geo, schema
from ssl4eo_zarr.rgb import rgb_from_l2a, to_rgb


@pytest.mark.parametrize(
    "lat, lon, epsg",
    [(52.52, 13.405, 32633), (-33.87, 151.21, 32756), (60.0, 5.0, 32632), (59.91, 10.75, 32632),
     (78.2, 15.6, 32633), (78.2, 8.0, 32631), (78.2, 30.0, 32635), (78.2, 40.0, 32637), (0.0, -0.001, 32630),
     (0.0, 0.0, 32631), (-0.001, 0.0, 32731)],
)
def test_utm_zones_with_norway_and_svalbard(lat, lon, epsg):
    assert geo.utm_epsg(lat, lon) == epsg


def test_patch_grid_is_centred_snapped_and_oriented():
    epsg, x, y = geo.patch_grid(48.137, 11.575)
    assert epsg == 32632 and x.shape == y.shape == (264,)
    assert np.allclose(np.diff(x), 10.0) and np.allclose(np.diff(y), -10.0)
    assert (x[0] - 5.0) % 10 == 0 and (y[0] + 5.0) % 10 == 0
    cx, cy = geo.lonlat_to_utm(11.575, 48.137, epsg)
    assert abs((x[0] + x[-1]) / 2 - cx) <= 5.0 and abs((y[0] + y[-1]) / 2 - cy) <= 5.0
    lon, lat = geo.utm_to_lonlat((x[131] + x[132]) / 2, (y[131] + y[132]) / 2, epsg)
    assert abs(lon - 11.575) < 1e-4 and abs(lat - 48.137) < 1e-4


def test_mgrs_tiles_of_known_places():
    assert geo.mgrs_tile(52.52, 13.405) == "T33UUU"
    assert geo.mgrs_tile(40.71, -74.01) == "T18TWL"
    assert geo.mgrs_tile(-33.87, 151.21) == "T56HLH"


def _reference_rgb(img, offset=1000):
    """The FORMAT.md listing, one image at a time, in float64."""
    v = img.astype(np.float64) - offset
    q2, q98 = np.quantile(v, [0.02, 0.98])
    v = np.where(v < q2, q2 + (v - q2) * 0.5, v)
    v = np.where(v > q98, q98 + (v - q98) * 0.5, v)
    q002, q50, q998 = np.quantile(v, [0.002, 0.5, 0.998])
    upper = max(2000.0, q998)
    lower = 0.0 if q50 < 1000 else q002
    return np.clip((v - lower) / (upper - lower) * 255, 0, 255).astype(np.uint8)


def test_to_rgb_matches_the_published_listing_per_image():
    rng = np.random.default_rng(0)
    dark = rng.integers(1000, 2500, (3, 40, 40)).astype(np.int16)
    bright = rng.integers(2500, 9000, (3, 40, 40)).astype(np.int16)
    stack = np.stack([dark, bright])
    out = to_rgb(stack)
    assert out.dtype == np.uint8 and out.shape == stack.shape
    for i in range(2):
        ref = _reference_rgb(stack[i])
        assert np.abs(out[i].astype(int) - ref.astype(int)).max() <= 1  # float32 vs float64 rounding at the edge
    np.testing.assert_array_equal(to_rgb(stack[1:2])[0], out[1])  # images are independent


def test_to_rgb_lower_bound_depends_on_the_median():
    dark = np.full((3, 8, 8), 1500, np.int16)  # median 500 < 1000: lower bound 0
    assert to_rgb(dark).max() == int(500 / 2000 * 255)
    with pytest.raises(ValueError, match="red, green, blue"):
        to_rgb(np.zeros((4, 8, 8), np.int16))


def test_rgb_from_l2a_picks_b04_b03_b02():
    l2a = np.zeros((12, 4, 4), np.int16) + 1000
    for band, value in (("B04", 3000), ("B03", 2000), ("B02", 1500)):
        l2a[schema.S2L2A.bands.index(band)] = value
    rgb = rgb_from_l2a(l2a)
    assert rgb[0].mean() > rgb[1].mean() > rgb[2].mean()
