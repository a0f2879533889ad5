import os

from ssl4eo_zarr.cli import main


def test_demo_runs_the_whole_read_path(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["demo", "--out", out, "--files", "2", "--samples", "4", "--size", "32", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "validate: 8 files checked, 0 with errors" in text
    assert "ChunkDataset: 2 batches, 32 patch-timestamps" in text
    assert "build: 3 written, 1 dropped" in text
    assert os.path.exists(os.path.join(out, "from-raw", "built", "manifest.json"))
    png = os.path.join(out, "quicklook.png")
    assert os.path.getsize(png) > 10_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_info_and_quicklook(root, tmp_path, capsys):
    assert main(["info", root]) == 0
    assert "locations: 42" in capsys.readouterr().out
    png = str(tmp_path / "q.png")
    assert main(["quicklook", root, "--sample", "3", "--out", png]) == 0
    assert os.path.getsize(png) > 10_000


def test_errors_are_reported_without_a_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "dataset path not found" in capsys.readouterr().err
