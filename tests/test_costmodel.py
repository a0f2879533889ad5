"""The cost model that chooses how to learn a shard's members: the choice between walking headers and reading
through follows the measured link (not a fixed member size), the probe measures a real slow host, the estimate is
printed before any tar header is read, and the virtual host's total cap holds."""

from __future__ import annotations

import os
import time

import pytest

import ssl4eo_zarr as sz
from ssl4eo_zarr import costmodel
from ssl4eo_zarr.costmodel import HEADER_READ, LOCAL, Link, expected_last
from ssl4eo_zarr.virtualhost import ID_BASE, VirtualHost, sample_members

MB = 1e6


@pytest.mark.parametrize(("stride", "walks"), [(280_000, False), (2_000_000, False), (3_000_000, True),
                                               (40_000_000, True)])
def test_walk_or_read_through_follows_the_round_trip_and_rate(stride, walks):
    """At 50 ms and 50 MB/s per response a member moves faster than a round trip below 2.5 MB: read through."""
    link = Link(0.05, 50 * MB, 32)
    w = link.window(stride)
    assert (w == HEADER_READ) is walks
    if not walks:
        assert w >= 2 * stride and w >= 5 * 0.05 * 50 * MB * 0.99
        requests, nbytes, seconds = link.index_cost(512, stride)
        assert requests < 512 / 2 and nbytes == 512 * stride
        assert seconds < link.walk_seconds(512)


def test_the_same_member_is_walked_when_the_host_caps_all_connections_together():
    """280 kB members: read through at 50 MB/s per response, but at 100 MB/s for 32 connections in all each gets
    3 MB/s and moving a member (90 ms) costs more than a round trip (50 ms): walk."""
    free, capped = Link(0.05, 50 * MB, 32), Link(0.05, 50 * MB, 32, total=100 * MB)
    assert free.window(280_000) > HEADER_READ
    assert capped.per_connection == pytest.approx(100 * MB / 32)
    assert capped.window(280_000) == HEADER_READ
    assert capped.window(100_000) > HEADER_READ  # 32 ms per member: still faster than a round trip


def test_a_byte_budget_forbids_reading_through_and_a_local_disk_always_walks():
    link = Link(0.05, 50 * MB, 32)
    assert link.window(280_000, budget=300_000) > HEADER_READ
    assert link.window(280_000, budget=100_000) == HEADER_READ, "a fetch's budget of bytes per header"
    assert LOCAL.window(1_000) == HEADER_READ and LOCAL.local
    assert Link(0.001, 50 * MB, 4).window(280_000) == HEADER_READ, "a short round trip: seeking is cheap"


def test_expected_last_is_the_order_statistic():
    assert expected_last(512, 0) == 0
    assert expected_last(512, 1) == pytest.approx(256.5)
    assert expected_last(512, 512) == pytest.approx(512, rel=1e-2)
    assert expected_last(10, 1000) == 10


@pytest.fixture(scope="module")
def slow_host():
    members = {"ssl4eo-s12": sample_members(16, ("S2L2A",))}
    with VirtualHost(members, latency=0.04, rate=20 * MB, total=30 * MB) as server:
        yield server


def test_the_probe_measures_round_trip_rate_and_a_host_wide_cap(slow_host):
    costmodel.forget()
    url = slow_host.root() + "/val/S2L2A/ssl4eos12_shard_000001.tar"
    slow_host.reset_counts()
    link = costmodel.probe(url, connections=16)
    assert 0.035 < link.rtt < 0.2, link
    assert 8 * MB < link.rate < 25 * MB, link
    assert link.total is not None and 15 * MB < link.total < 40 * MB, link
    assert link.connections == 16 and "ms round trip" in link.describe()
    probed = slow_host.requests
    assert probed == 4 + 3 * costmodel.PARALLEL, "a cap is measured twice: a real one repeats"
    again = costmodel.probe(url, connections=4)
    assert slow_host.requests == probed, "measured once per host and process"
    assert again.connections == 4 and again.rtt == link.rtt
    costmodel.forget()


def test_a_host_without_a_cap_is_not_taken_for_one_by_a_fresh_process():
    """A host-wide cap the probe imagines makes a fetch plan for a fraction of the link. The first probe of a
    process (first connections, imports) is the one users get, so it runs in a fresh interpreter."""
    import subprocess
    import sys

    members = {"ssl4eo-s12": sample_members(16, ("S2L2A",))}
    with VirtualHost(members, latency=0.05, rate=20 * MB) as host:
        url = host.root() + "/val/S2L2A/ssl4eos12_shard_000001.tar"
        code = ("import sys; from ssl4eo_zarr import costmodel; link = costmodel.probe(sys.argv[1]); "
                "print(link.rtt, link.rate, link.total)")
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            rtt, rate, total = out.stdout.split()
            assert 0.045 < float(rtt) < 0.2 and 10 * MB < float(rate) < 25 * MB, out.stdout
            assert total == "None", f"an uncapped host measured as capped: {out.stdout}"


def test_the_virtual_hosts_total_cap_holds_for_many_connections(slow_host):
    from concurrent.futures import ThreadPoolExecutor

    from ssl4eo_zarr.shardfile import open_binary

    url = slow_host.root() + "/val/S2L2A/ssl4eos12_shard_000001.tar"

    def read(k: int) -> int:
        with open_binary(url) as fh:
            fh.seek(k * 2_500_000)
            return len(fh.read(2_500_000))

    began = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        moved = sum(pool.map(read, range(8)))
    rate = moved / (time.perf_counter() - began)
    assert moved == 20_000_000
    assert rate < 30 * MB * 1.1, f"{rate / MB:.0f} MB/s through a host capped at 30 MB/s"


def test_a_dry_run_prints_its_estimate_before_any_tar_header_is_read(tmp_path):
    members = {"ssl4eo-s12": sample_members(16, ("S2L2A",))}
    log = str(tmp_path / "requests.log")
    with VirtualHost(members, latency=0.01, log=log) as host:
        costmodel.forget()
        ids = [f"{ID_BASE['val'] + k:07d}" for k in (3, 700, 1500)]
        seen: list[tuple[str, int]] = []

        def notify(text: str) -> None:
            seen.append((text, len(host.log())))

        plan = sz.fetch(host.root(), str(tmp_path / "dry"), split="val", modalities=["S2L2A"], locations=ids,
                        dry_run=True, notify=notify)
        assert sorted(s.key for s in plan.selected) == ids
        text, at = seen[0]
        assert "planning: ~" in text and "requests" in text and "moving: ~3 members" in text, text
        assert "ms round trip" in text
        before = host.log()[:at]
        # The probe reads ranges of one shard (a few large reads); the walk itself (many 4 kB reads of every
        # selected shard) comes after the estimate.
        shards_before = {p for m, p, _r in before if m == "GET" and p.endswith(".tar")}
        shards_after = {p for m, p, _r in host.log()[at:] if m == "GET" and p.endswith(".tar")}
        assert len(shards_before) <= 1 and len(shards_after) == 3, (shards_before, shards_after)
        assert plan.estimate is not None and plan.estimate.members == 3
    costmodel.forget()


def test_a_fifth_of_a_split_with_small_members_moves_little_more_than_it_selects(tmp_path):
    """DEM at full size (~230 kB a member): reading shards through would be quicker on this link, but the
    fetch's byte budget makes the index walk headers; host bytes <= 1.15 x the selected members."""
    members = {"ssl4eo-s12": sample_members(264, ("DEM",))}
    with VirtualHost(members, latency=0.003) as host:
        costmodel.forget()
        dest = str(tmp_path / "fifth")
        host.reset_counts()
        result = sz.fetch(host.root(), dest, split="val", modalities=["DEM"], limit=2176 // 5, seed=2)
        moved = host.bytes_sent
        assert result.locations == 435 and result.plan.estimate.budget < 50_000
        table = os.path.getsize(os.path.join(dest, "val_metadata.parquet"))
        assert moved - table <= 1.15 * result.plan.nbytes, (moved, table, result.plan.nbytes)
        assert sz.fetching.verify(dest) == []
    costmodel.forget()
