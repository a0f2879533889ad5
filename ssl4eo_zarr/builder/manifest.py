"""The build manifest (``OUT/manifest.json``): every input location as written (split, file, index) or
dropped (reason), the files done, and the settings a resume must match. Rewritten atomically after each step."""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import BuildError
from ..storage import atomic_write

#: Name of the manifest in the output folder.
MANIFEST = "manifest.json"


def write_json(path: str, doc: dict) -> None:
    """``doc`` as indented JSON at ``path``, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True, default=str)


def load_manifest(out: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a build in ``out`` with ``settings`` (a new one when there is none); a build with other
    settings is refused, since resuming it would mix two datasets."""
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        return {"settings": settings, "locations": {}, "files": {}}
    with open(path, encoding="utf-8") as f:
        previous = json.load(f)
    if previous.get("settings") != settings:
        raise BuildError(f"{out} holds a build with other settings ({previous.get('settings')}); "
                         "write into a new folder or rerun with the same settings to resume")
    return previous
