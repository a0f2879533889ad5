import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")


def test_explore_notebook_runs_clean(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(os.path.join(EXAMPLES, "explore.ipynb"), as_version=4)
    os.environ["SSL4EO_ROOT"] = str(tmp_path / "demo")
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.pop("SSL4EO_ROOT")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_training_script_trains(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, "train.py"), "--epochs", "1", "--workers", "2"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "epoch 0:" in out.stdout and "locations/s" in out.stdout


def test_lightning_datamodule_fits(root):
    pl = pytest.importorskip("lightning.pytorch")
    import torch

    from ssl4eo_zarr.loader.lightning import SSL4EODataModule
    from ssl4eo_zarr.loader.transforms import normalize

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Conv2d(12, 1, 1)
            self.epochs_seen = []

        def training_step(self, batch, _):
            x = normalize(batch)["S2L2A"]
            return self.layer(x).pow(2).mean()

        def validation_step(self, batch, _):
            assert batch["S2L2A"].shape[1] == 4

        def on_train_epoch_start(self):
            self.epochs_seen.append(self.trainer.train_dataloader.dataset.epoch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    import shutil
    import tempfile

    tmp = tempfile.mkdtemp()
    try:
        shutil.copytree(os.path.join(root, "val"), os.path.join(tmp, "train"))
        shutil.copytree(os.path.join(root, "val"), os.path.join(tmp, "val"))
        dm = SSL4EODataModule(tmp, modalities=("S2L2A",), batch_size=8, num_workers=2, pin_memory=False)
        model = Tiny()
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, default_root_dir=tmp)
        trainer.fit(model, dm)
        assert trainer.global_step == 2 * len(dm.train_dataset)
        assert model.epochs_seen == [0, 1], "Lightning calls set_epoch on the train dataset"
    finally:
        shutil.rmtree(tmp)


def _fit_tiny(root, tmp_path, module_cls, *, accelerator="cpu", **dm_kwargs):
    import shutil

    import lightning.pytorch as pl

    from ssl4eo_zarr.loader.lightning import SSL4EODataModule

    data = str(tmp_path / "data")
    shutil.copytree(os.path.join(root, "val"), os.path.join(data, "train"))
    shutil.copytree(os.path.join(root, "val"), os.path.join(data, "val"))
    dm = SSL4EODataModule(data, modalities=("S2L2A",), batch_size=8, num_workers=2, **dm_kwargs)
    model = module_cls()
    trainer = pl.Trainer(max_epochs=1, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(model, dm)
    return dm, model, trainer


def _tiny_module():
    pl = pytest.importorskip("lightning.pytorch")
    import torch

    from ssl4eo_zarr.loader.transforms import normalize

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Conv2d(12, 1, 1)
            self.devices_seen = set()

        def training_step(self, batch, _):
            self.devices_seen.add(batch["S2L2A"].device.type)
            return self.layer(normalize(batch)["S2L2A"]).pow(2).mean()

        def validation_step(self, batch, _):
            self.devices_seen.add(batch["S2L2A"].device.type)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Tiny


def test_a_lightning_module_that_moves_batches_itself_keeps_doing_so(root, tmp_path):
    """The DataModule feeds the GPU from the workers' arenas (its transfer_batch_to_device), but a module's own
    transfer_batch_to_device still decides."""
    tiny = _tiny_module()

    class OwnTransfer(tiny):
        calls = 0

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            OwnTransfer.calls += 1
            return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}

    dm, model, trainer = _fit_tiny(root, tmp_path, OwnTransfer, pin_memory=False)
    assert OwnTransfer.calls == trainer.global_step + trainer.num_val_batches[0] > 0
    assert model.devices_seen == {"cpu"}


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_lightning_on_cuda_feeds_batches_from_the_arenas_pinned_in_place(root, tmp_path):
    from ssl4eo_zarr.loader import pool

    dm, model, trainer = _fit_tiny(root, tmp_path, _tiny_module(), accelerator="cuda")
    assert model.devices_seen == {"cuda"}
    assert trainer.train_dataloader.pin_memory is False, "no pinned copies: the arenas are page-locked in place"
    assert pool._REGISTERED and dm._feeders


def test_lightning_checkpoint_resumes_the_loader_mid_epoch(root, tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    import shutil

    import torch

    from ssl4eo_zarr.loader.lightning import SSL4EODataModule

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen = []

        def training_step(self, batch, _):
            self.seen.append(tuple(batch["sample"]))
            return self.layer(torch.ones(1, 1)).sum()

        def predict_step(self, batch, _):
            return batch["sample"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = str(tmp_path / "data")
    shutil.copytree(os.path.join(root, "val"), os.path.join(data, "train"))
    shutil.copytree(os.path.join(root, "val"), os.path.join(data, "val"))

    def module():
        return SSL4EODataModule(data, modalities=("S2L2A",), batch_size=4, num_workers=2, pin_memory=False,
                                return_metadata=True, timestamps=0)

    def trainer(**kw):
        kw.setdefault("enable_checkpointing", False)
        return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=str(tmp_path), limit_val_batches=0, **kw)

    from lightning.pytorch.callbacks import ModelCheckpoint

    full = Recorder()
    every4 = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=4, save_top_k=-1)
    trainer(max_epochs=1, callbacks=[every4], enable_checkpointing=True).fit(full, module())
    assert len(full.seen) == 11  # 42 locations in batches of 4
    mid = os.path.join(str(tmp_path / "ckpt"), "epoch=0-step=4.ckpt")
    assert os.path.exists(mid), os.listdir(tmp_path / "ckpt")
    resumed = Recorder()
    trainer(max_epochs=1).fit(resumed, module(), ckpt_path=mid)
    assert resumed.seen == full.seen[4:], "the resumed run gets exactly the batches that would have come next"
    predicted = trainer().predict(Recorder(), module())
    assert sorted(s for batch in predicted for s in batch) == sorted(s for b in full.seen for s in b)


def _cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ssl4eo_cli", os.path.join(EXAMPLES, "lightning", "cli.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config, shape", [("ssl4eo.yaml", (2, 12, 24, 24)), ("terratorch.yaml", (12, 4, 24, 24))])
def test_lightning_cli_configs_train(root, tmp_path, config, shape):
    """Both shipped YAML files train through LightningCLI for a few steps (small crops on the test data)."""
    pytest.importorskip("jsonargparse")
    pytest.importorskip("lightning.pytorch")
    cli = _cli().main(args=[
        "fit", "--config", os.path.join(EXAMPLES, "lightning", config), "--data.root", root,
        "--data.train_split", "val", "--data.crop", "24", "--data.num_workers", "0", "--data.pin_memory", "false",
        "--data.batch_size", "8" if config == "ssl4eo.yaml" else "null", "--trainer.max_steps", "2",
        "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ])
    assert cli.trainer.global_step == 2
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert tuple(batch["S2L2A"].shape[1:]) == shape
    if config == "terratorch.yaml":
        assert batch["S2L2A"].shape[0] in (16, 10), "whole 64-location chunks (16 and 10 in the test data)"
        assert tuple(batch["S1GRD"].shape[1:]) == (2, 4, 24, 24)
