"""Exception tree. Each error also subclasses the matching built-in so callers can catch either."""

from __future__ import annotations

from typing import Any


class SSL4EOError(Exception):
    """Base class of every error this library raises on purpose."""


class SchemaError(SSL4EOError, ValueError):
    """A Dataset or file does not follow the SSL4EO-S12 v1.1 format (wrong dims, dtypes, bands, sizes)."""


class CorruptFileError(SSL4EOError, OSError):
    """A chunk file is damaged: not a zip, truncated, CRC mismatch, undecodable chunk, missing member."""

    def __init__(self, path: str, problem: str | None = None, *, member: str | None = None):
        if problem is None:  # rebuilt from its message alone (torch's DataLoader re-raises worker errors so)
            self.path, self.problem, self.member = "", str(path), None
            super().__init__(str(path))
            return
        self.path = str(path)
        self.problem = problem
        self.member = member
        where = f"{self.path}" + (f" (member {member!r})" if member else "")
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep the structured fields when raised in a DataLoader worker
        return (type(self), (self.path, self.problem), {"member": self.member})


class DamagedShardError(CorruptFileError):
    """A tar shard whose member headers stop being readable part-way: ``offset`` is the byte of the first bad
    header, ``readable`` how many locations precede it (the rest of the shard cannot be located)."""

    def __init__(self, path: str, problem: str | None = None, *, member: str | None = None, offset: int = -1,
                 readable: int = 0):
        super().__init__(path, problem, member=member)
        self.offset, self.readable = offset, readable

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem),
                {"member": self.member, "offset": self.offset, "readable": self.readable})


class UnsafeFileError(CorruptFileError):
    """A chunk file that could harm the reader: decompression bomb, absurd shape, path traversal in a name."""


class ModalityMismatchError(SSL4EOError, ValueError):
    """Modality files of the same chunk disagree (sample ids, grid, sample count)."""


class DatasetNotFoundError(SSL4EOError, FileNotFoundError):
    """A dataset root, split, modality folder or chunk file does not exist."""


class BuildError(SSL4EOError, RuntimeError):
    """The builder cannot go on (missing cloud-mask source, locked output, inconsistent raw input)."""


class S1OrderWarning(UserWarning):
    """An S1GRD file from before the 2026-02-19 fix: its data follow the product-name order, not ``time_``."""
