"""A LightningDataModule over ChunkDataset (needs ``lightning``; ``pip install lightning``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import DataLoader

from .. import schema
from .dataset import ChunkDataset
from .transforms import Compose, RandomCrop, RandomD4, ToLayout

try:
    import lightning.pytorch as pl
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
        **dataset_kwargs: Any,
    ):
        """``crop``/``d4``/``layout`` build the training transform from a config file (LightningCLI):
        ``RandomCrop(crop)``, ``RandomD4()`` and :class:`~ssl4eo_zarr.loader.ToLayout` (``"BCTHW"`` for
        TerraTorch's ``[B, C, T, H, W]``), after ``transform`` when both are given. ``layout`` applies to every
        loader. Other keyword arguments go to :class:`~ssl4eo_zarr.ChunkDataset`."""
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

    def _loader(self, ds: ChunkDataset | None) -> DataLoader:
        if ds is None:
            raise RuntimeError("call setup() for this stage first (Lightning does)")
        return EpochDataLoader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                               persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset)

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
