"""A LightningDataModule over ChunkDataset (needs ``lightning``; ``pip install lightning``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from .. import schema
from .dataset import ChunkDataset
from .device import DeviceFeeder
from .transforms import Compose, RandomCrop, RandomD4, ToLayout

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError as exc:  # pragma: no cover - exercised only without lightning
    raise ImportError("ssl4eo_zarr.loader.lightning needs lightning: pip install lightning") from exc


class _EpochSampler:
    """Stands in for the DataLoader's sampler and forwards ``set_epoch`` to the dataset."""

    def __init__(self, sampler, dataset):
        self._sampler, self._dataset = sampler, dataset

    def set_epoch(self, epoch: int) -> None:
        self._dataset.set_epoch(epoch)

    def __iter__(self):
        return iter(self._sampler)

    def __len__(self) -> int:
        return len(self._sampler)


class EpochDataLoader(DataLoader):
    """A DataLoader whose ``sampler.set_epoch`` reaches the IterableDataset.

    Lightning (and other trainers) reshuffle by calling ``dataloader.sampler.set_epoch(epoch)``; an
    IterableDataset has no sampler of its own, so without this the file order would never change.
    """

    @property
    def sampler(self):
        return _EpochSampler(self.__dict__["_ssl4eo_sampler"], self.dataset)

    @sampler.setter
    def sampler(self, value) -> None:
        self.__dict__["_ssl4eo_sampler"] = value


class SSL4EODataModule(pl.LightningDataModule):
    """Train/val/test/predict DataLoaders of :class:`~ssl4eo_zarr.ChunkDataset` for a dataset root of either
    distribution (chunk files or WebDataset shards).

    The training loader's position is saved in checkpoints (:meth:`state_dict`) and restored on
    ``trainer.fit(..., ckpt_path=...)``: a run resumed from a mid-epoch checkpoint gets exactly the batches the
    interrupted run would have seen next, in the same order, with the same augmentations.

    Under DDP each dataset picks up the rank and world size from ``torch.distributed`` when the loaders are
    made (after Lightning initialised the process group), and :meth:`on_train_epoch_start`-style reshuffling
    happens through ``set_epoch``, which Lightning calls on the loader's sampler and :class:`EpochDataLoader`
    forwards to the dataset. Validation reads
    every location once per rank (``shuffle=False``), padding at most one chunk per rank.

    Batches are dicts of native-dtype tensors (see ChunkDataset); normalise on the device with
    :func:`ssl4eo_zarr.loader.normalize` in your LightningModule's ``on_after_batch_transfer``.

    On a CUDA device (``device_feed=True``, default) batches go to the GPU through
    :class:`~ssl4eo_zarr.loader.DeviceFeeder`: straight from the workers' reused arenas, page-locked in place,
    instead of through the DataLoader's pinned copies (``pin_memory`` is then not used: it would copy every
    batch first). A ``transfer_batch_to_device`` of your LightningModule still takes precedence.
    """

    def __init__(
        self,
        root: str,
        *,
        modalities: Sequence[str] = schema.DEFAULT_TRAIN_MODALITIES,
        batch_size: int | None = None,
        timestamps: str | int | Sequence[int] = "random",
        num_workers: int = 4,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        predict_split: str | None = None,
        transform: Callable[..., dict[str, Any]] | None = None,
        crop: int | None = None,
        d4: bool = False,
        layout: str = "BTCHW",
        seed: int = 0,
        pin_memory: bool = True,
        device_feed: bool = True,
        persistent_workers: bool = True,
        **dataset_kwargs: Any,
    ):
        """``crop``/``d4``/``layout`` build the training transform from a config file (LightningCLI):
        ``RandomCrop(crop)``, ``RandomD4()`` and :class:`~ssl4eo_zarr.loader.ToLayout` (``"BCTHW"`` for
        TerraTorch's ``[B, C, T, H, W]``), after ``transform`` when both are given. ``layout`` applies to every
        loader. ``persistent_workers``: the training loader's workers live through the run, so their buffers stay
        mapped and each reads its next epoch's first batch ahead (no warm-up or wait for a first chunk set at
        every epoch); evaluation loaders start workers per run, so their buffers are not held between
        validations. Other keyword arguments go to :class:`~ssl4eo_zarr.ChunkDataset`."""
        super().__init__()
        self.root = root
        self.kwargs = dict(modalities=modalities, batch_size=batch_size, seed=seed, **dataset_kwargs)
        self.timestamps = timestamps
        self.num_workers = num_workers
        self.splits = (train_split, val_split)
        self.test_split = test_split or val_split
        self.predict_split = predict_split or val_split
        steps: list[Callable[..., dict[str, Any]]] = [transform] if transform is not None else []
        steps += [RandomCrop(crop)] if crop else []
        steps += [RandomD4()] if d4 else []
        self.layout = ToLayout(layout)
        self.transform = Compose([*steps, self.layout]) if steps else self.layout
        self.pin_memory = pin_memory
        self.device_feed = device_feed
        self.persistent_workers = persistent_workers
        self._feeders: dict[torch.device, DeviceFeeder] = {}
        self.train_dataset: ChunkDataset | None = None
        self.val_dataset: ChunkDataset | None = None
        self.test_dataset: ChunkDataset | None = None
        self.predict_dataset: ChunkDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = ChunkDataset(self.root, split=self.splits[0], timestamps=self.timestamps,
                                              transform=self.transform, shuffle=True, num_workers=self.num_workers,
                                              **self.kwargs)
            resume = getattr(self, "_resume", None)
            if resume:
                self.train_dataset.load_state_dict(resume)
        if stage in (None, "fit", "validate"):
            self.val_dataset = self._eval(self.splits[1])
        if stage in (None, "test"):
            self.test_dataset = self._eval(self.test_split)
        if stage in (None, "predict"):
            self.predict_dataset = self._eval(self.predict_split, return_metadata=True)

    def _eval(self, split: str, **overrides: Any) -> ChunkDataset:
        """Every location once per rank, all timestamps, in stored order."""
        kwargs = {**self.kwargs, **overrides}
        return ChunkDataset(self.root, split=split, timestamps="all", shuffle=False, num_workers=self.num_workers,
                            transform=self.layout, **kwargs)

    def _loader(self, ds: ChunkDataset | None, persistent: bool = False) -> DataLoader:
        if ds is None:
            raise RuntimeError("call setup() for this stage first (Lightning does)")
        feeding = self.device_feed and self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return EpochDataLoader(ds, batch_size=None, num_workers=self.num_workers,
                               pin_memory=self.pin_memory and not feeding,
                               persistent_workers=persistent and self.num_workers > 0)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Lightning's hook: on CUDA (``device_feed``) through a :class:`~ssl4eo_zarr.loader.DeviceFeeder` per
        device (asynchronous copies from the arenas, each batch held until its copies finished); elsewhere, or
        when the LightningModule moves batches itself, as Lightning would."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        if model is not None and is_overridden("transfer_batch_to_device", model):
            return model.transfer_batch_to_device(batch, device, dataloader_idx)
        if not self.device_feed or device.type != "cuda" or not isinstance(batch, Mapping):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        feeder = self._feeders.get(device)
        if feeder is None:
            feeder = self._feeders[device] = DeviceFeeder(device)
        return feeder(batch)

    def teardown(self, stage: str) -> None:
        """Let go of the batches whose copies to the GPU were still in flight."""
        for feeder in self._feeders.values():
            feeder.synchronize()

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.persistent_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        """Batches with metadata (``sample``, ``center_lat`` ...), to write predictions back per location."""
        return self._loader(self.predict_dataset)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (epoch and batches completed in it), saved in every checkpoint."""
        if self.train_dataset is None or self.trainer is None:
            return {}
        # "processed": checkpoint callbacks run after a batch's step but before Lightning counts it completed,
        # and a resumed fit continues after the processed batches.
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
        return {"train": self.train_dataset.state_dict(batches=done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training loader where the checkpoint left it (Lightning calls this after ``setup``)."""
        self._resume = state_dict.get("train")
        if self._resume and self.train_dataset is not None:
            self.train_dataset.load_state_dict(self._resume)
