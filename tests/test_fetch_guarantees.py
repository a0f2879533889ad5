"""A fetched dataset is complete or says so: the manifest records the selection and a ``complete`` mark written
last, ``verify`` (and ``ssl4eo-zarr verify``) names what is missing, readers warn on an unfinished fetch; a folder
that is not a fetch's own is refused and left untouched; a source file that changed between runs is named and
what was made from it fetched again; every filter argument is checked and named (antimeridian boxes, inclusive
end dates)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

import ssl4eo_zarr as sz
from ssl4eo_zarr import DatasetNotFoundError, schema, synthetic
from ssl4eo_zarr.fetching import MANIFEST, SelectionError, fetch, verify
from ssl4eo_zarr.metadata import select
from ssl4eo_zarr.testing import RangeHTTPServer

MODS = ["S2L2A", "S1GRD"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("guarantees_source"))
    synthetic.make_shards(root, 24, per_shard=8, size=16, seed=3, modalities=("S2L2A", "S1GRD"))
    return root


def _ids(source, k):
    return [str(s) for s in sz.open_dataset(source, split="val")["sample"].values[k]]


def test_an_interrupted_fetch_is_named_by_verify_and_the_readers(source, tmp_path):
    ids = _ids(source, [0, 1, 9, 10, 20, 21])  # three output shards of 2
    dest = str(tmp_path / "cut")
    with RangeHTTPServer(source) as server:
        class Bar:  # once planned, the host loses the source shard of the third output shard
            def __init__(self, **kw):
                self.moving = kw.get("desc") == "fetch"

            def update(self, n):
                if self.moving:
                    server.vanish(f"/val/S1GRD/{schema.shard_name(3)}")

            def close(self):
                pass

        with pytest.raises(DatasetNotFoundError):
            fetch(server.url, dest, split="val", modalities=MODS, locations=ids, per_shard=2, workers=1, progress=Bar)
    assert os.path.exists(os.path.join(dest, "val", "S2L2A", schema.shard_name(1)))
    problems = verify(dest)
    assert any("did not finish" in p for p in problems), problems
    assert any(schema.shard_name(3) in p and "not written" in p for p in problems), problems
    with pytest.warns(UserWarning, match="unfinished fetch"):
        part = sz.open_dataset(dest, split="val", modalities=["S1GRD"])
    assert part.sizes["sample"] < len(ids)
    from ssl4eo_zarr.cli import main

    assert main(["verify", dest]) == 1
    with RangeHTTPServer(source) as server:
        fetch(server.url, dest, split="val", modalities=MODS, locations=ids, per_shard=2)
    assert verify(dest) == []
    assert main(["verify", dest]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sz.open_dataset(dest, split="val")
    assert sorted(got["sample"].values.tolist()) == sorted(ids)


def test_verify_names_a_selected_location_whose_file_is_gone_or_changed(source, tmp_path):
    ids = _ids(source, [2, 3, 12])
    dest = str(tmp_path / "whole")
    fetch(source, dest, split="val", modalities=MODS, locations=ids, per_shard=2)
    assert verify(dest) == []
    shard = os.path.join(dest, "val", "S1GRD", schema.shard_name(2))
    os.unlink(shard)
    problems = verify(dest)
    assert any(shard in p and "missing" in p for p in problems), problems
    doc = json.load(open(os.path.join(dest, MANIFEST)))
    first = os.path.join("val", "S2L2A", schema.shard_name(1))
    doc["expected"][first] = doc["expected"][first] + ["0999999"]  # the selection put one more location there
    json.dump(doc, open(os.path.join(dest, MANIFEST), "w"))
    assert any("0999999" in p for p in verify(dest))


def test_a_folder_that_is_not_a_fetch_is_refused_and_left_untouched(source, tmp_path):
    other = tmp_path / "other"
    (other / "val" / "S2L2A").mkdir(parents=True)
    theirs = other / "val" / "S2L2A" / schema.shard_name(1)
    theirs.write_bytes(b"someone else's shard")
    temp = other / "val" / "S2L2A" / ".notes.txt.abc.tmp"
    temp.write_bytes(b"theirs too")
    with pytest.raises(SelectionError, match="not empty .* holds no fetch_manifest.json"):
        fetch(source, str(other), split="val", modalities=["S2L2A"], locations=_ids(source, [0]))
    assert theirs.read_bytes() == b"someone else's shard" and temp.read_bytes() == b"theirs too"
    assert sorted(os.listdir(other)) == ["val"]
    empty = tmp_path / "empty"
    empty.mkdir()
    fetch(source, str(empty), split="val", modalities=["S2L2A"], locations=_ids(source, [0]))
    assert verify(str(empty)) == []


def test_a_source_that_changed_between_runs_is_named_and_refetched(source, tmp_path):
    import shutil

    from ssl4eo_zarr.shardfile import scan_shard, write_shard

    mirror = str(tmp_path / "mirror")
    shutil.copytree(source, mirror)
    ids = _ids(mirror, [1, 2])  # both in shard 1
    dest = str(tmp_path / "dest")
    fetch(mirror, dest, split="val", modalities=["S2L2A"], locations=ids)
    path = os.path.join(mirror, "val", "S2L2A", schema.shard_name(1))
    with open(path, "rb") as f:
        members = [(m.name, (f.seek(m.offset), f.read(m.size))[1]) for m in scan_shard(path)]
    # The host replaces the shard: location 1's member now holds location 3's arrays (another size too).
    swapped = dict(members)
    swapped[members[1][0]] = swapped[members[3][0]]
    write_shard(path, list(swapped.items()))
    with pytest.warns(UserWarning, match=rf"source files changed .*{schema.shard_name(1)}"):
        fetch(mirror, dest, split="val", modalities=["S2L2A"], locations=ids)
    assert verify(dest) == []
    out = os.path.join(dest, "val", "S2L2A", schema.shard_name(1))
    with open(out, "rb") as f:
        got = {m.key: (f.seek(m.offset), f.read(m.size))[1] for m in scan_shard(out)}
    assert got[ids[0]] == swapped[members[1][0]], "the member as the source holds it now"


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"bbox": (0, 10, 5, 5)}, "south 10.0 is north of north 5.0"),
    ({"bbox": (0, -100, 5, 5)}, "latitudes"),
    ({"bbox": (0, 0, 200, 5)}, "longitudes"),
    ({"bbox": (0, 0, 5)}, "four finite numbers"),
    ({"months": [0, 6]}, "months are 1"),
    ({"months": [13]}, "months are 1"),
    ({"dates": ("2021-06-01", "2021-01-01")}, "start 2021-06-01 is after end"),
    ({"dates": ("2021-06-01", "someday")}, "end 'someday' is not a date"),
    ({"max_cloud": 10}, "max_cloud=10: a cloud fraction"),
    ({"limit": -1}, "limit=-1"),
    ({"limit": 0}, "limit=0"),
])
def test_every_filter_argument_is_checked_and_named(source, tmp_path, kwargs, named):
    dest = tmp_path / "never"
    with pytest.raises(SelectionError, match=named):
        fetch(source, str(dest), split="val", modalities=["S2L2A"], **kwargs)
    assert not dest.exists()


def _table():
    times = [pd.Timestamp(t) for t in ("2021-06-30 10:31", "2021-03-01", "2021-01-05", "2020-12-01")]
    rows = {"center_lon": [179.5, -179.5, 10.0, 0.0], "center_lat": [0.0, 1.0, 45.0, 45.0]}
    for t in range(4):
        rows[f"s2_time_{t}"] = [times[0] - pd.Timedelta(days=90 * t), times[1] - pd.Timedelta(days=90 * t),
                                times[2], times[3]]
        rows[f"cloud_{t}"] = [0.0, 0.5, np.nan, 0.1]
    return pd.DataFrame(rows, index=["0000001", "0000002", "0000003", "0000004"])


def test_select_boxes_across_the_antimeridian_and_end_dates_inclusive():
    table = _table()
    assert select(table, bbox=(170, -10, -170, 10)).index.tolist() == ["0000001", "0000002"]
    assert select(table, bbox=(-10, 40, 20, 50)).index.tolist() == ["0000003", "0000004"]
    # an acquisition at 10:31 on the end day is inside "2021-06-30"; a time of day given is compared exactly
    assert "0000001" in select(table, start="2020-01-01", end="2021-06-30").index
    assert "0000001" not in select(table, start="2020-01-01", end="2021-06-30 10:00").index
    assert select(table, max_cloud=0.1).index.tolist() == ["0000001", "0000004"]
    with pytest.raises(ValueError, match="no cloud cover"):
        select(table.drop(columns=[f"cloud_{t}" for t in range(4)]), max_cloud=0.2)


def test_the_cli_takes_a_box_with_a_negative_west(source, tmp_path, capsys):
    from ssl4eo_zarr.cli import main

    lon = sz.open_dataset(source, split="val")["center_lon"].values
    assert main(["fetch", source, str(tmp_path / "d"), "--split", "val", "--modalities", "S2L2A",
                 "--bbox", "-180,-90,180,90", "--dry-run"]) in (0, 2)
    err = capsys.readouterr().err
    assert "expected one argument" not in err and len(lon) == 24


def test_a_host_that_ignores_range_is_named_at_once_not_read_quadratically(source, tmp_path, monkeypatch):
    from ssl4eo_zarr.storage import http

    # The synthetic shards are small: refuse skips beyond 1 kB, as 16 MB is refused on published shards.
    monkeypatch.setattr(http, "RANGE_SKIP_LIMIT", 1000)
    with RangeHTTPServer(source, ranges=False) as server:
        with pytest.raises(http.RangeIgnoredError, match="ignores Range requests .* download the files"):
            fetch(server.url, str(tmp_path / "d"), split="val", modalities=["S2L2A"], locations=_ids(source, [5]))
        assert server.requests < 40, f"{server.requests} requests: the error was retried"
