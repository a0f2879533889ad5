"""The build manifest (``OUT/manifest.json``): every input location as written (split, file, index) or
dropped (reason), the files done, and the settings a resume must match. Rewritten atomically after each step."""

from __future__ import annotations

import os
from typing import Any

from ..errors import BuildError
from ..storage.lock import load_resumable

#: Name of the manifest in the output folder.
MANIFEST = "manifest.json"


def load_manifest(out: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a build in ``out`` with ``settings`` (a new one when there is none); a build with other
    settings is refused, since resuming it would mix two datasets."""
    return load_resumable(os.path.join(out, MANIFEST), settings, {"locations": {}, "files": {}},
                          lambda other: BuildError(f"{out} holds a build with other settings ({other}); write into a "
                                                   "new folder or rerun with the same settings to resume"))
