"""A minimal self-supervised training loop over SSL4EO-S12 chunk files (two seasons of a location as positives).

    python examples/train.py ROOT --split train --epochs 2 --workers 4

Without ROOT it trains on a small synthetic dataset. Batches travel as int16/float16 and are normalised on
the device; the loader is sharded over DDP ranks automatically (run it under torchrun).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from torch.utils.data import DataLoader

import ssl4eo_zarr
from ssl4eo_zarr.loader import Compose, DeviceFeeder, RandomCrop, RandomD4, normalize


class Encoder(torch.nn.Module):
    def __init__(self, bands: int, dim: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(bands, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, dim, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(dim, dim),
        )

    def forward(self, x):
        return torch.nn.functional.normalize(self.net(x), dim=1)


def info_nce(a, b, temperature=0.1):
    logits = a @ b.T / temperature
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(a), device=a.device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", nargs="?")
    parser.add_argument("--split", default="val")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=48)
    args = parser.parse_args()
    root = args.root
    if root is None:
        root = os.path.join(tempfile.mkdtemp(), "demo")
        ssl4eo_zarr.synthetic.make_dataset(root, n_files=2, samples=16, size=64, split=args.split)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ds = ssl4eo_zarr.ChunkDataset(root, split=args.split, modalities=("S2L2A",), timestamps=[0, 2],
                                  batch_size=args.batch_size, transform=Compose([RandomCrop(args.crop), RandomD4()]),
                                  drop_last=True)
    model = Encoder(12).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # Workers that live through the run keep their buffers and read each epoch's first batch ahead. On CUDA the
    # feeder copies straight from the workers' shared memory (page-locked in place): no pin_memory copy.
    loader = DataLoader(ds, batch_size=None, num_workers=args.workers, persistent_workers=args.workers > 0)
    feed = DeviceFeeder(device, normalize=True) if device == "cuda" else None
    for epoch in range(args.epochs):
        ds.set_epoch(epoch)
        t0, seen, total, steps = time.perf_counter(), 0, 0.0, 0
        for batch in loader:
            x = (feed(batch) if feed else normalize(batch, device=device))["S2L2A"]  # float32 [B, 2, 12, crop, crop]
            loss = info_nce(model(x[:, 0]), model(x[:, 1]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += x.shape[0]
            total += float(loss)
            steps += 1
        print(f"epoch {epoch}: {steps} steps, loss {total / max(steps, 1):.3f}, "
              f"{seen / (time.perf_counter() - t0):.0f} locations/s")


if __name__ == "__main__":
    main()
