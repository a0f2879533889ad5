"""One writer per output folder (a build, a fetch): an exclusive lock file, taken over when its owner died; and
the resumable JSON manifest such writers keep beside their output."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

from ..errors import BuildError
from .paths import atomic_write

#: Name of the lock file in the output folder.
LOCK = ".ssl4eo-build.lock"


class BuildLock:
    """An exclusive lock on an output folder; a lock left by a dead process on this host is taken over. The
    error names the writer holding it (a build or a fetch: both write dataset folders)."""

    def __init__(self, out: str):
        self.path = os.path.join(out, LOCK)
        self.held = False

    def _owner(self) -> tuple[str, int] | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                host, pid = f.read().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner and owner[0] == socket.gethostname():
                    try:
                        os.kill(owner[1], 0)
                    except ProcessLookupError:
                        os.unlink(self.path)  # stale: its build was killed
                        continue
                    except PermissionError:
                        pass
                where = f"pid {owner[1]} on {owner[0]}" if owner else "another process"
                raise BuildError(f"{os.path.dirname(self.path)} is being written by another build ({where}); "
                                 f"wait for it, or remove {self.path} if that build is gone") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            return
        raise BuildError(f"cannot take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            os.unlink(self.path)
            self.held = False

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def write_json(path: str, doc: dict) -> None:
    """``doc`` as indented JSON at ``path``, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True, default=str)


def load_resumable(path: str, settings: dict[str, Any], fresh: dict[str, Any],
                   refuse: Callable[[dict[str, Any]], Exception]) -> dict[str, Any]:
    """The JSON manifest at ``path`` if it was written with ``settings``, ``fresh`` (with them) when there is
    none; one written with other settings raises ``refuse(its settings)``: resuming it would mix two datasets."""
    if not os.path.exists(path):
        return {"settings": settings, **fresh}
    with open(path, encoding="utf-8") as f:
        previous = json.load(f)
    if previous.get("settings") != settings:
        raise refuse(previous.get("settings"))
    return previous
