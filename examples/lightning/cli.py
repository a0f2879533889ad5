"""Train with Lightning's own command line over ssl4eo_zarr's DataModule: no code, a YAML file.

    python examples/lightning/cli.py fit --config examples/lightning/ssl4eo.yaml --data.root ROOT

The model here is a small contrastive encoder (two seasons of a location are positives); swap ``model`` in the
YAML for any LightningModule, e.g. a TerraTorch task (see terratorch.yaml). Checkpoints carry the loader's
position, so ``fit --ckpt_path last.ckpt`` resumes mid-epoch where the run stopped.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI

from ssl4eo_zarr.loader import normalize
from ssl4eo_zarr.loader.lightning import SSL4EODataModule


class SeasonContrast(pl.LightningModule):
    """InfoNCE between two timestamps of each location, images normalised on the device.

    Expects batches ``{modality: [B, 2, C, H, W]}`` (``timestamps: [0, 2]``) or ``[B, C, 2, H, W]`` (TerraTorch
    layout, ``layout: BCTHW``).
    """

    def __init__(self, modality: str = "S2L2A", bands: int = 12, dim: int = 32, lr: float = 1e-3,
                 time_axis: int = 1, temperature: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = torch.nn.Sequential(
            torch.nn.Conv2d(bands, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(16, dim, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(dim, dim))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        # Native dtypes travel; float32 is made on the device.
        return normalize(batch, layout="BCTHW" if self.hparams.time_axis == 2 else "BTCHW")

    def training_step(self, batch, batch_idx):
        x = batch[self.hparams.modality]
        a, b = (x.select(self.hparams.time_axis, k) for k in (0, 1))
        za = torch.nn.functional.normalize(self.encoder(a), dim=1)
        zb = torch.nn.functional.normalize(self.encoder(b), dim=1)
        logits = za @ zb.T / self.hparams.temperature
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(za), device=za.device))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(za))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main(args=None) -> LightningCLI:
    return LightningCLI(SeasonContrast, SSL4EODataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
