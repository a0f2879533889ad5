import numpy as np
import pytest

from ssl4eo_zarr import CloudClass, schema


def test_modalities_match_the_published_format():
    assert list(schema.MODALITIES) == ["S1GRD", "S2L1C", "S2L2A", "S2RGB", "DEM", "NDVI", "LULC", "S1RTC"]
    assert schema.CHUNK_MODALITIES == ("S1GRD", "S2L1C", "S2L2A", "S2RGB")
    assert schema.S2L1C.n_bands == 13 and "B10" in schema.S2L1C.bands
    assert schema.S2L2A.bands == tuple(b for b in schema.S2L1C.bands if b != "B10")
    assert schema.S1GRD.bands == ("vv", "vh") and schema.S1GRD.dtype == np.float16
    assert schema.S2RGB.dtype == np.uint8 and schema.S2L2A.dtype == np.int16
    assert schema.S2L2A.chunks == (64, 1, 12, 264, 264)
    for mod in schema.MODALITIES.values():
        if mod.name == "LULC":  # classes: no statistics published
            assert not mod.has_stats
            continue
        mean, std = mod.stats()
        assert mean.shape == std.shape == (mod.n_bands,)
        assert (std > 0).all()


def test_statistics_with_and_without_offset():
    with_offset, _ = schema.S2L2A.stats()
    without, _ = schema.S2L2A.stats(with_offset=False)
    np.testing.assert_allclose(with_offset - without, 1000)
    s1, _ = schema.S1GRD.stats(with_offset=False)
    np.testing.assert_allclose(s1, [-12.577, -20.265])


def test_cloud_classes_in_published_order():
    assert [c.name for c in CloudClass] == ["LAND", "WATER", "SNOW", "THIN_CLOUD", "THICK_CLOUD", "CLOUD_SHADOW",
                                            "NO_DATA"]
    assert list(map(int, CloudClass)) == list(range(7))


def test_file_names_round_trip_and_real_split_lists_parse():
    name = schema.chunk_file_name("train", 3812)
    assert name == "ssl4eos12_train_seasonal_data_003812.zarr.zip"
    assert schema.parse_chunk_file_name("/x/S2L1C/" + name) == ("train", 3812)
    assert schema.parse_chunk_file_name("other.zarr.zip") is None
    with pytest.raises(ValueError):
        schema.chunk_file_name("val", 0)


def test_published_split_lists_follow_the_naming(shared_splits):
    for split, count in schema.SPLITS.items():
        names = shared_splits(split)
        assert len(names) == count
        assert [schema.parse_chunk_file_name(n) for n in names] == [(split, i) for i in range(1, count + 1)]


def test_get_modality_is_case_insensitive_and_helpful():
    assert schema.get_modality("s2l2a") is schema.S2L2A
    with pytest.raises(ValueError, match="S1GRD"):
        schema.get_modality("S3")
    assert schema.sample_id(80717) == "0080717"
    with pytest.raises(ValueError):
        schema.sample_id("12345678")


def test_webdataset_modalities_and_unknown_ones():
    assert schema.DEM.static and schema.DEM.n_timestamps == 1 and not schema.NDVI.static
    np.testing.assert_allclose(schema.NDVI.stats()[0], [0.327])
    np.testing.assert_allclose(schema.DEM.stats()[1], [560.326])
    assert schema.modality_name("dem") == "DEM" and schema.modality_name("SAR2") == "SAR2"
    new = schema.modality_from_metadata("SAR2", np.dtype("float32"), ("hh", "hv"), 4)
    assert not new.known and new.n_bands == 2 and not new.has_stats and not new.static
    assert schema.modality_from_metadata("S2RGB", np.dtype("int8"), ("a",), 1) is schema.S2RGB
    assert schema.reference_modality(["S1GRD", "DEM", "S2L1C"]) == "S2L1C"


def test_shard_names_and_published_counts():
    assert schema.shard_name(1) == "ssl4eos12_shard_000001.tar"
    assert schema.parse_shard_name("a/b/ssl4eos12_shard_000477.tar") == 477
    assert schema.parse_shard_name("ssl4eos12_shard_1.tar") is None
    names = [schema.shard_name(i) for i in range(1, 478)]
    train = schema.published_shard_counts("train", names)
    assert len(train) == 477 and sum(train) == 243_968 and train[-1] == 256
    val = [f"root/val/S2L2A/{schema.shard_name(i)}" for i in range(1, 6)]
    assert schema.published_shard_counts("val", val) == [512] * 4 + [128]
    assert schema.published_shard_counts("val", val[:4]) is None
    # Published-looking names that are not the published list: counted, never taken from the table.
    assert schema.published_shard_counts("val", val[::-1]) is None
    assert schema.published_shard_counts("val", [schema.shard_name(i) for i in range(2, 7)]) is None
    chunks = [schema.chunk_file_name("val", i) for i in range(1, 35)]
    assert schema.is_published_chunk_list("val", chunks) and not schema.is_published_chunk_list("val", chunks[::-1])
