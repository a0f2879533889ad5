"""Cloud-mask providers: where each S2 timestamp's SEnSeI classes come from.

A mask is never invented silently: without a source the build stops, unless the user explicitly asks for a
stated fallback (recorded in the manifest).
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import BuildError
from ..schema import S2_OFFSET, S2_SCALE, S2_WAVELENGTHS_NM, S2L1C, CloudClass

#: Sentinel-2 L2A Scene Classification Layer -> SEnSeI v2 classes.
SCL_TO_SENSEI = {
    0: CloudClass.NO_DATA,        # no data
    1: CloudClass.NO_DATA,        # saturated or defective
    2: CloudClass.LAND,           # dark area pixels (topographic shadow, dark surfaces)
    3: CloudClass.CLOUD_SHADOW,   # cloud shadows
    4: CloudClass.LAND,           # vegetation
    5: CloudClass.LAND,           # not vegetated
    6: CloudClass.WATER,          # water
    7: CloudClass.LAND,           # unclassified
    8: CloudClass.THICK_CLOUD,    # cloud, medium probability
    9: CloudClass.THICK_CLOUD,    # cloud, high probability
    10: CloudClass.THIN_CLOUD,    # thin cirrus
    11: CloudClass.SNOW,          # snow or ice
}
_SCL_LUT = np.full(256, CloudClass.NO_DATA, dtype=np.uint8)
for _k, _v in SCL_TO_SENSEI.items():
    _SCL_LUT[_k] = _v

#: Fallbacks a user may ask for explicitly when no mask source exists.
FALLBACKS = {"land": CloudClass.LAND, "no-data": CloudClass.NO_DATA}


def scl_to_sensei(scl: np.ndarray) -> np.ndarray:
    """uint8 SEnSeI classes from an SCL raster (any integer dtype; NaN or out-of-range -> no data)."""
    scl = np.nan_to_num(np.asarray(scl, dtype=np.float64), nan=0.0)
    return _SCL_LUT[np.clip(scl, 0, 255).astype(np.uint8)]


#: The SEnSeIv2 model zoo entry assumed for the published masks (the name the SEnSeIv2 README uses; the
#: SSL4EO-S12 v1.1 report names SEnSeIv2 but not the checkpoint).
SENSEI_MODEL = "SEnSeIv2-SegFormerB2-alldata-ambiguous"

#: SEnSeIv2 output channel -> schema class, by the model's class count (``CLASSES`` in its config), read with
#: ``output_style=None``. The 7-class models predict the seven published classes in the published order. The
#: 4-class order is clear, thin, thick, shadow, as the package itself uses it: its training data pipeline maps
#: the seven classes with ``clear=[0, 1, 2], thin=[3], thick=[4], shadow=[5]`` (``train.construct_data``) and its
#: inference post-processing (``CloudMask.postprocess``, ``output_style="4-class"``) turns 7-class scores into
#: ``[clear, thin, thick, shadow]``. (A comment in its metrics code says CloudSEN12's clear, thick, thin,
#: shadow; that is the order of CloudSEN12's own labels, not what the package trains or outputs.) "Clear"
#: becomes land: a 4-class model cannot tell land, water and snow apart.
SENSEI_CLASS_TABLE: dict[int, tuple[CloudClass, ...]] = {
    7: (CloudClass.LAND, CloudClass.WATER, CloudClass.SNOW, CloudClass.THIN_CLOUD, CloudClass.THICK_CLOUD,
        CloudClass.CLOUD_SHADOW, CloudClass.NO_DATA),
    4: (CloudClass.LAND, CloudClass.THIN_CLOUD, CloudClass.THICK_CLOUD, CloudClass.CLOUD_SHADOW),
}

#: Environment variables that point a build at a local SEnSeIv2 model (build machines may be offline).
ENV_CONFIG, ENV_WEIGHTS, ENV_MODEL, ENV_DEVICE = ("SSL4EO_SENSEI_CONFIG", "SSL4EO_SENSEI_WEIGHTS", "SSL4EO_SENSEI_MODEL",
                                                  "SSL4EO_SENSEI_DEVICE")
#: A folder holding the files a model config names (the layout of :func:`resolve_model_config`).
ENV_DIR = "SSL4EO_SENSEI_DIR"

#: The offline folder layout, as ``senseiv2.utils.get_model_files`` lays out its ``hf_models`` folder plus a
#: ``segformer`` folder: ``full-models/<model>/{config.yaml,weights.pt}``, ``sensei-configs/<SEnSeIv2 config>``,
#: ``segformer/<hub id with "/" as "--">/`` (``config.json`` and weights, as ``save_pretrained`` writes them).
OFFLINE_LAYOUT = ("full-models/<model>/config.yaml", "full-models/<model>/weights.pt", "sensei-configs/<name>.yaml",
                  "segformer/<org>--<name>/config.json")


def _search_folders(config_path: str, extra: Sequence[str]) -> list[str]:
    here = os.path.dirname(os.path.abspath(config_path))
    folders = [*extra, here, os.path.dirname(os.path.dirname(here))]  # the model folder, and hf_models above it
    env = os.environ.get(ENV_DIR)
    if env:
        folders.insert(0, env)
    return list(dict.fromkeys(folders))


def _find(candidates: Sequence[str], test=os.path.isfile) -> str | None:
    return next((os.path.abspath(c) for c in candidates if test(c)), None)


def resolve_model_config(config_path: str, folders: Sequence[str] = (), *, out_dir: str | None = None) -> str:
    """A copy of a SEnSeIv2 model ``config.yaml`` whose file references all point at local files, so that the
    package loads the model without reaching the hub; returns the copy's path (the original when nothing
    needed resolving).

    The package resolves a relative ``SEnSeIv2`` entry (the descriptor front end's config) against its own
    install folder, and ``SEGFORMER_CONFIG`` (a hub id such as ``nvidia/mit-b2``) through
    ``from_pretrained``: both fail offline. They are looked for in ``folders``, ``$SSL4EO_SENSEI_DIR``, the
    config's folder and the ``hf_models`` folder above it, in the layout of :data:`OFFLINE_LAYOUT`. A
    ``SEnSeIv2`` entry that is nowhere is a :class:`BuildError` naming where it was looked for; a SegFormer id
    not found locally is left to ``transformers`` (its cache and ``HF_HUB_OFFLINE`` still apply).
    """
    import yaml

    with open(config_path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    search = _search_folders(config_path, folders)
    changed = False
    front = config.get("SEnSeIv2")
    if front:
        entry = str(front)
        base = os.path.basename(entry)
        candidates = [entry] if os.path.isabs(entry) else []
        for folder in search:
            candidates += [os.path.join(folder, entry), os.path.join(folder, "sensei-configs", base),
                           os.path.join(folder, base)]
        found = _find(candidates)
        if found is None:
            raise BuildError(f"{config_path}: its SEnSeIv2 entry {entry!r} (the descriptor front end's config) is not "
                             f"a local file; looked in {', '.join(search)} (as <folder>/sensei-configs/{base}). Put it "
                             f"there, or set {ENV_DIR} to a folder laid out as {', '.join(OFFLINE_LAYOUT)}")
        if found != entry:
            config["SEnSeIv2"], changed = found, True
    segformer = config.get("SEGFORMER_CONFIG")
    if config.get("MODEL_TYPE") == "Segformer" and segformer and not os.path.isdir(str(segformer)):
        name = str(segformer)
        candidates = []
        for folder in search:
            candidates += [os.path.join(folder, "segformer", name.replace("/", "--")),
                           os.path.join(folder, "segformer", name.rsplit("/", 1)[-1]), os.path.join(folder, name)]
        found = _find(candidates, lambda c: os.path.isfile(os.path.join(c, "config.json")))
        if found is not None:
            config["SEGFORMER_CONFIG"], changed = found, True
    if not changed:
        return config_path
    import hashlib
    import tempfile

    text = yaml.safe_dump(config, sort_keys=False)
    where = out_dir or os.path.join(tempfile.gettempdir(), "ssl4eo-sensei")
    os.makedirs(where, exist_ok=True)
    path = os.path.join(where, hashlib.sha256(text.encode()).hexdigest()[:16] + "-config.yaml")
    if not os.path.exists(path):
        from ..storage import atomic_write

        with atomic_write(path, "w") as f:
            f.write(text)
    return path

_INSTALL_HINT = ("SEnSeIv2 is not on the package index: install it from its repository "
                 "(git clone https://github.com/aliFrancis/SEnSeIv2 && pip install ./SEnSeIv2)")


def sensei_descriptors(bands: Sequence[str] = S2L1C.bands) -> list[dict[str, Any]]:
    """SEnSeIv2 band descriptors of Sentinel-2 L1C bands, in the order given: one
    ``{"band_type": "TOA Reflectance", "min_wavelength": nm, "max_wavelength": nm}`` per band."""
    out = []
    for b in bands:
        if b not in S2_WAVELENGTHS_NM:
            raise ValueError(f"no SEnSeIv2 descriptor for band {b!r}; known: {', '.join(S2_WAVELENGTHS_NM)}")
        lo, hi = S2_WAVELENGTHS_NM[b]
        out.append({"band_type": "TOA Reflectance", "min_wavelength": lo, "max_wavelength": hi})
    return out


def sensei_classes(probs: np.ndarray) -> np.ndarray:
    """uint8 schema classes ``[H, W]`` from SEnSeIv2 class scores ``[K, H, W]`` (K = 7 or 4, see
    :data:`SENSEI_CLASS_TABLE`)."""
    probs = np.asarray(probs)
    table = SENSEI_CLASS_TABLE.get(probs.shape[0])
    if table is None:
        raise BuildError(f"SEnSeIv2 model predicts {probs.shape[0]} classes; this library maps "
                         f"{sorted(SENSEI_CLASS_TABLE)}-class models (use a model with the published 7 classes)")
    return np.asarray(table, dtype=np.uint8)[np.argmax(probs, axis=0)]


def sensei_missing() -> str | None:
    """Why SEnSeIv2 cannot run here, or ``None`` when it can (the package imports and a model is configured:
    local files in :data:`ENV_CONFIG`/:data:`ENV_WEIGHTS`, or a model name whose files ``get_model_files``
    can provide)."""
    try:
        import senseiv2.inference  # noqa: F401
    except ImportError as exc:
        return f"package 'senseiv2' cannot be imported ({exc}); {_INSTALL_HINT}"
    config, weights = os.environ.get(ENV_CONFIG), os.environ.get(ENV_WEIGHTS)
    if config or weights:
        missing = [f"{k}={v!r}" for k, v in ((ENV_CONFIG, config), (ENV_WEIGHTS, weights)) if not v or not os.path.exists(v)]
        return f"SEnSeIv2 model files not found: {', '.join(missing)}" if missing else None
    return None


class SenseiMasker:
    """SEnSeIv2 cloud masks for Sentinel-2 L1C patches, through the package's own ``CloudMask``.

    Parameters
    ----------
    config, weights:
        Local paths of the model's ``config.yaml`` and ``weights.pt``. Default: :data:`ENV_CONFIG` /
        :data:`ENV_WEIGHTS`, else ``senseiv2.utils.get_model_files(model)`` (which downloads them into the
        package's ``hf_models`` folder on first use, so run it once where the hub can be reached).
    model:
        Model zoo name (default :data:`SENSEI_MODEL`).
    device:
        torch device for inference (default ``$SSL4EO_SENSEI_DEVICE`` or ``"cpu"``).
    """

    def __init__(self, config: str | None = None, weights: str | None = None, *, model: str | None = None,
                 device: str | None = None, batch_size: int = 1):
        reason = sensei_missing() if config is None else None
        if reason:
            raise BuildError(reason)
        from senseiv2.inference import CloudMask

        config = config or os.environ.get(ENV_CONFIG)
        weights = weights or os.environ.get(ENV_WEIGHTS)
        if not config or not weights:
            from senseiv2.utils import get_model_files

            name = model or os.environ.get(ENV_MODEL) or SENSEI_MODEL
            try:
                config, weights = get_model_files(name)
            except Exception as exc:  # noqa: BLE001 - a hub download fails in many ways offline
                raise BuildError(f"cannot get SEnSeIv2 model {name!r} ({exc}); on an offline machine set "
                                 f"{ENV_CONFIG} and {ENV_WEIGHTS} to local copies of its config.yaml and weights.pt") from None
        config = resolve_model_config(config)
        kwargs: dict[str, Any] = {"device": device or os.environ.get(ENV_DEVICE, "cpu"), "output_style": None,
                                  "categorise": False}
        params = inspect.signature(CloudMask).parameters
        if "batch_size" in params:
            kwargs["batch_size"] = batch_size
        self.descriptors = sensei_descriptors()
        if "descriptors" in params:  # releases before the inference refactor took them here
            kwargs["descriptors"] = self.descriptors
        try:
            self._mask = CloudMask(config, weights, **kwargs)
        except OSError as exc:  # transformers' "can't load the config of 'nvidia/mit-b2'", a missing file
            raise BuildError(f"cannot load the SEnSeIv2 model {config} ({exc}); offline, lay its files out as "
                             f"{', '.join(OFFLINE_LAYOUT)} under {ENV_DIR} (see docs/build.md)") from None
        self.patch_size = int(self._mask.model_config["PATCH_SIZE"])

    def __call__(self, l1c: np.ndarray) -> np.ndarray:
        """uint8 classes ``[H, W]`` from one L1C image ``[13, H, W]`` int16 (DN + 1000)."""
        refl = (np.asarray(l1c, dtype=np.float32) - S2_OFFSET) / S2_SCALE  # what the package's S2 loader feeds it
        stride = min(self.patch_size, *refl.shape[1:])
        # Descriptors always: the package's FullModel reads them even for models without a SEnSeI front end.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Descriptors provided")
            return sensei_classes(self._mask(refl, descriptors=self.descriptors, stride=stride))


@functools.lru_cache(maxsize=1)
def _masker() -> SenseiMasker:
    return SenseiMasker()  # one model per worker process


def choose_source(season_folder: str, policy: str) -> tuple[str, str | None]:
    """(source kind, file) for one S2 L2A season folder.

    ``policy`` is ``"auto"`` (cloud_mask.tif, else SCL.tif, else SEnSeI if installed, else error), one of
    those names, or ``"fallback:land"`` / ``"fallback:no-data"`` for an explicit constant mask.
    """
    mask = os.path.join(season_folder, "cloud_mask.tif")
    scl = os.path.join(season_folder, "SCL.tif")
    if policy.startswith("fallback:"):
        kind = policy.split(":", 1)[1]
        if kind not in FALLBACKS:
            raise BuildError(f"unknown cloud-mask fallback {kind!r}; use one of {sorted(FALLBACKS)}")
        return policy, None
    if policy in ("auto", "file") and os.path.exists(mask):
        return "file", mask
    if policy in ("auto", "scl") and os.path.exists(scl):
        return "scl", scl
    why = sensei_missing() if policy in ("auto", "sensei") else "not asked for"
    if why is None:
        return "sensei", None
    raise BuildError(
        f"no cloud-mask source for {season_folder}: no cloud_mask.tif, no SCL.tif, and SEnSeIv2 cannot run: {why}. "
        "Provide masks, install SEnSeIv2, or pass --cloud-mask fallback:land to write a constant 'land' mask "
        "(recorded in the manifest)."
    )


def constant_mask(policy: str, shape: tuple[int, int]) -> np.ndarray:
    return np.full(shape, FALLBACKS[policy.split(":", 1)[1]], dtype=np.uint8)


def run_sensei(l1c: np.ndarray) -> np.ndarray:
    """SEnSeIv2 classes uint8 ``[H, W]`` from one L1C image ``[13, H, W]`` (DN + 1000) with the configured model."""
    return _masker()(l1c)
