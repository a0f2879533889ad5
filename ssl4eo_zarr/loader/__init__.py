"""The PyTorch side: :class:`ChunkDataset`, its pure epoch planning and batch transforms."""

from .dataset import ChunkDataset
from .device import DeviceFeeder
from .plan import epoch_plan
from .transforms import CenterCrop, Compose, Normalize, RandomCrop, RandomD4, ToLayout, normalize

__all__ = ["CenterCrop", "ChunkDataset", "Compose", "DeviceFeeder", "Normalize", "RandomCrop", "RandomD4", "ToLayout",
           "epoch_plan", "normalize"]
