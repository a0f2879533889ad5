"""Small real datasets written once per session: 3 chunk files (16, 16 and a partial 10 locations) of 32 px."""

from __future__ import annotations

import os
import shutil

import pytest

from ssl4eo_zarr import synthetic

SIZE = 32
HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_configure(config):
    # Split and shard indexes go to a folder of this run, never to the user's cache.
    import tempfile

    os.environ["SSL4EO_ZARR_CACHE"] = tempfile.mkdtemp(prefix="ssl4eo-test-cache-")


@pytest.fixture(scope="session")
def root(tmp_path_factory) -> str:
    """A dataset root with a val split: 3 files (16 + 16 + 10 locations), 4 modalities, 32 x 32 px."""
    path = str(tmp_path_factory.mktemp("ssl4eo") / "root")
    synthetic.make_dataset(path, n_files=3, samples=16, size=SIZE, seed=0, split="val", last_samples=10)
    return path


@pytest.fixture(scope="session")
def odd_root(tmp_path_factory) -> str:
    """5 files (the last partial) for sharding tests."""
    path = str(tmp_path_factory.mktemp("ssl4eo_odd") / "root")
    synthetic.make_dataset(path, n_files=5, samples=8, size=16, seed=3, split="train", last_samples=5,
                           modalities=("S2L1C", "S2L2A", "S1GRD"))
    return path


@pytest.fixture()
def root_copy(root, tmp_path) -> str:
    """A private copy of ``root`` that a test may damage."""
    dst = str(tmp_path / "root")
    shutil.copytree(root, dst)
    return dst


@pytest.fixture(scope="session")
def reference_files() -> dict[str, str]:
    """Files written by xarray + zarr-python 2.18 itself (tests/data/make_reference.py)."""
    return {m: os.path.join(HERE, "data", f"zarr218_{m}.zarr.zip") for m in ("S1GRD", "S2L1C", "S2L2A", "S2RGB")}


@pytest.fixture(scope="session")
def shared_splits():
    """Reader of the real split lists in ../shared/splits (skips when the checkout has none beside it)."""
    folder = os.path.join(HERE, "..", "..", "shared", "splits")

    def read(split: str) -> list[str]:
        path = os.path.join(folder, f"ssl4eos12_{split}.txt")
        if not os.path.exists(path):
            pytest.skip("../shared/splits is not beside this checkout")
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]

    return read
