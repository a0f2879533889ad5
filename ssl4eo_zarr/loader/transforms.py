"""BatchDict transforms on torch tensors, applied in the worker.

A batch is the dict yielded by :class:`~ssl4eo_zarr.ChunkDataset`. Spatial transforms act on every image
tensor (one per modality, ``[B, T, C, H, W]`` or ``[B, C, H, W]``) and on ``cloud_mask`` with the same
random draw per location, so modalities and timestamps of a location stay aligned. Randomness comes from
the ``generator`` the dataset passes (seeded by seed, epoch, rank, worker and batch), never from a global
RNG, so runs are reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import schema

#: A batch as ChunkDataset yields it: modality and metadata keys -> tensors or lists.
BatchDict = dict[str, Any]


#: BatchDict keys that are metadata, never images.
_META_KEYS = {"sample", "file", "center_lat", "center_lon", "crs", "timestamp", "sample_id", "location", "season"}


def spatial_keys(batch: BatchDict) -> list[str]:
    """Keys of the batch holding images: modality tensors (known or new ones) and ``cloud_mask``."""
    return [k for k, v in batch.items() if k not in _META_KEYS and not k.startswith("time_") and torch.is_tensor(v)
            and v.dim() >= 3]


def _apply_per_sample(batch: BatchDict, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> BatchDict:
    out = dict(batch)
    for key in spatial_keys(batch):
        x = batch[key]
        out[key] = torch.stack([fn(x[i], i) for i in range(x.shape[0])]) if x.shape[0] else x
    return out


class RandomCrop:
    """Crop ``size`` x ``size`` px at a random position per location (224 in the published configs)."""

    needs_generator = True

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, batch: BatchDict, generator: torch.Generator | None = None) -> BatchDict:
        keys = spatial_keys(batch)
        if not keys:
            return batch
        ref = batch[keys[0]]
        h, w = ref.shape[-2:]
        if self.size > min(h, w):
            raise ValueError(f"crop of {self.size} px does not fit patches of {h} x {w} px")
        n = ref.shape[0]
        ys = torch.randint(0, h - self.size + 1, (n,), generator=generator)
        xs = torch.randint(0, w - self.size + 1, (n,), generator=generator)
        s = self.size
        return _apply_per_sample(batch, lambda x, i: x[..., ys[i]: ys[i] + s, xs[i]: xs[i] + s])


class CenterCrop:
    """Crop the central ``size`` x ``size`` px."""

    needs_generator = False

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, batch: BatchDict) -> BatchDict:
        out = dict(batch)
        for key in spatial_keys(batch):
            x = batch[key]
            h, w = x.shape[-2:]
            if self.size > min(h, w):
                raise ValueError(f"crop of {self.size} px does not fit patches of {h} x {w} px")
            y0, x0 = (h - self.size) // 2, (w - self.size) // 2
            out[key] = x[..., y0: y0 + self.size, x0: x0 + self.size]
        return out


class RandomD4:
    """One of the 8 flips/rotations of the square (dihedral group D4) per location."""

    needs_generator = True

    def __call__(self, batch: BatchDict, generator: torch.Generator | None = None) -> BatchDict:
        keys = spatial_keys(batch)
        if not keys:
            return batch
        n = batch[keys[0]].shape[0]
        k = torch.randint(0, 8, (n,), generator=generator)

        def d4(x: torch.Tensor, i: int) -> torch.Tensor:
            x = torch.rot90(x, int(k[i]) % 4, dims=(-2, -1))
            return torch.flip(x, dims=(-1,)) if k[i] >= 4 else x

        return _apply_per_sample(batch, d4)


class Normalize:
    """Cast images to float32 and standardise each band with the published mean/std; ``s2_offset`` says
    whether the batch's S2 values carry the +1000 offset (the dataset's option of the same name)."""

    needs_generator = False

    def __init__(self, s2_offset: bool | None = True):
        self.s2_offset = s2_offset

    def __call__(self, batch: BatchDict) -> BatchDict:
        return normalize(batch, s2_offset=self.s2_offset)


class ToLayout:
    """Reorder the image axes of every modality: ``"BCTHW"`` gives ``[B, C, T, H, W]`` (TerraTorch's temporal
    layout) from the loader's ``[B, T, C, H, W]``; ``"BTCHW"`` leaves them. Tensors without a time axis and the
    cloud mask are left as they are."""

    needs_generator = False

    def __init__(self, layout: str = "BCTHW"):
        if layout not in ("BCTHW", "BTCHW"):
            raise ValueError(f"layout must be 'BCTHW' or 'BTCHW', got {layout!r}")
        self.layout = layout

    def __call__(self, batch: BatchDict) -> BatchDict:
        if self.layout == "BTCHW":
            return batch
        out = dict(batch)
        for key in spatial_keys(batch):
            x = batch[key]
            if key != schema.CLOUD_VAR and x.dim() == 5:
                out[key] = x.permute(0, 2, 1, 3, 4)
        return out


class Compose:
    """Apply transforms in order; passes the generator to those that need one."""

    needs_generator = True

    def __init__(self, transforms: Sequence[Callable[..., BatchDict]]):
        self.transforms = list(transforms)

    def __call__(self, batch: BatchDict, generator: torch.Generator | None = None) -> BatchDict:
        for t in self.transforms:
            batch = call_transform(t, batch, generator)
        return batch


def call_transform(t: Callable[..., BatchDict], batch: BatchDict, generator: torch.Generator | None) -> BatchDict:
    """Call a built-in transform with the generator, a user callable with the batch alone."""
    if getattr(t, "needs_generator", False):
        return t(batch, generator=generator)
    return t(batch)


def normalize(batch: BatchDict, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
              s2_offset: bool | None = True, layout: str = "BTCHW") -> BatchDict:
    """Standardised copy of a batch: each modality as ``dtype`` ``(x - mean) / std`` per band, with the
    published statistics (modalities without published statistics, such as LULC classes, are left as they are).

    Use it on the GPU after a native-dtype batch arrived (``normalize(batch, device="cuda")``): the copy
    to the device moves 2 bytes per value instead of 4. Band axis: dim -3 (``[B, T, C, H, W]`` or ``[B, C, H, W]``),
    dim 1 with ``layout="BCTHW"`` (:class:`ToLayout`). ``s2_offset`` says which S2 convention the batch follows
    (the dataset's ``s2_offset``). A batch with a ``dataset`` key (TerraMesh's) is standardised with that
    dataset's own published statistics, which differ from SSL4EO-S12's.
    """
    out = dict(batch)
    name = batch.get("dataset")
    corpus = schema.CORPORA.get(name) if isinstance(name, str) and name != schema.SSL4EO_S12.name else None
    for key, value in batch.items():
        mod = schema.find_modality(key) if isinstance(key, str) else None
        if mod is None or not torch.is_tensor(value):
            continue
        stats = corpus.modality_stats(key, with_offset=bool(s2_offset)) if corpus is not None else (
            mod.stats(with_offset=bool(s2_offset)) if mod.has_stats else None)
        if stats is None:
            continue
        x = value.to(device=device, non_blocking=True) if device is not None else value
        trailing = x.dim() - 2 if layout == "BCTHW" and x.dim() == 5 else 2
        mean, std = (torch.as_tensor(v, dtype=dtype, device=x.device).view(-1, *([1] * trailing)) for v in stats)
        out[key] = (x.to(dtype) - mean) / std
    return out
