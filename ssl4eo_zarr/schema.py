"""The SSL4EO-S12 v1.1 chunk format, defined once.

Every other module (writer, reader, validator, builder, loader, plots) reads its facts from here:
modalities, band names, dtypes, offsets, value ranges, chunking, file naming, cloud classes and the
published normalisation statistics. See ``docs/format.md`` for the prose version.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Locations per chunk file in the published dataset (the last file of a custom build may hold fewer).
SAMPLES_PER_FILE = 64
#: Seasonal timestamps per location (spring, summer, autumn, winter).
N_TIMESTAMPS = 4
#: Patch edge in pixels at 10 m (2,640 m; divisible by 6 so 10/20/60 m pixels nest).
PATCH_SIZE = 264
#: Ground sampling distance of every band after resampling, metres.
RESOLUTION = 10.0
#: S2 digital numbers carry this offset (ESA processing baseline 04.00): reflectance = (DN - 1000) / 10000.
S2_OFFSET = 1000
#: Divisor from offset-free DN to surface reflectance.
S2_SCALE = 10000.0

#: Name of the image variable in every modality file.
BANDS_VAR = "bands"
#: Name of the SEnSeI cloud-mask variable (S2 modalities only).
CLOUD_VAR = "cloud_mask"

#: Dimension names of the image variable, in storage order.
BANDS_DIMS = ("sample", "time", "band", "y", "x")
#: Dimension names of the cloud mask, in storage order.
CLOUD_DIMS = ("sample", "time", "y", "x")

#: Per-sample metadata variables: name -> (dims, numpy dtype kind description).
#: ``str`` means any fixed-length unicode (``<U..``) or variable-length string.
METADATA_VARS: dict[str, tuple[tuple[str, ...], str]] = {
    "center_lat": (("sample",), "float64"),
    "center_lon": (("sample",), "float64"),
    "crs": (("sample",), "int64"),
    "x_": (("sample", "x"), "float64"),
    "y_": (("sample", "y"), "float64"),
    "file_id": (("sample", "time"), "str"),
    "sample_id": (("sample", "time"), "str"),
    "time_": (("sample", "time"), "datetime64[ns]"),
}

#: Index coordinates written in every file.
COORDS = ("band", "sample", "time", "x", "y")

#: Width of the zero-padded location id (``0080717``).
SAMPLE_ID_WIDTH = 7

#: Blosc configuration of zarr-python 2.18's default compressor, used for every array unless told otherwise.
DEFAULT_COMPRESSOR = {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0}


class CloudClass(enum.IntEnum):
    """SEnSeI v2 cloud-mask classes, stored as uint8 in ``cloud_mask``."""

    LAND = 0
    WATER = 1
    SNOW = 2
    THIN_CLOUD = 3
    THICK_CLOUD = 4
    CLOUD_SHADOW = 5
    NO_DATA = 6


#: Classes counted as cloud by ``cloud_fraction`` (thin and thick cloud; shadows are not cloud).
CLOUDY_CLASSES = (CloudClass.THIN_CLOUD, CloudClass.THICK_CLOUD)

#: Spectral range (min, max) in nm of each Sentinel-2 MSI band, as SEnSeIv2 describes the bands to its model
#: (ESA's spectral response; see :func:`ssl4eo_zarr.builder.cloud.sensei_descriptors`).
S2_WAVELENGTHS_NM: dict[str, tuple[float, float]] = {
    "B01": (425.0, 461.0), "B02": (446.0, 542.0), "B03": (537.5, 582.5), "B04": (645.5, 684.5),
    "B05": (694.0, 714.0), "B06": (731.0, 749.0), "B07": (767.0, 795.0), "B08": (763.5, 904.5),
    "B8A": (847.5, 880.5), "B09": (930.5, 957.5), "B10": (1337.0, 1413.0), "B11": (1541.0, 1683.0),
    "B12": (2074.0, 2314.0),
}

#: RGB colours (0..1) used for cloud classes in plots.
CLOUD_COLORS = {
    CloudClass.LAND: (0.45, 0.62, 0.30),
    CloudClass.WATER: (0.15, 0.35, 0.75),
    CloudClass.SNOW: (0.85, 0.95, 1.00),
    CloudClass.THIN_CLOUD: (0.80, 0.80, 0.80),
    CloudClass.THICK_CLOUD: (1.00, 1.00, 1.00),
    CloudClass.CLOUD_SHADOW: (0.25, 0.25, 0.25),
    CloudClass.NO_DATA: (0.00, 0.00, 0.00),
}


@dataclass(frozen=True)
class Modality:
    """Facts of one modality folder (``S1GRD``, ``S2L1C``, ``S2L2A``, ``S2RGB``, and in the WebDataset
    distribution ``DEM``, ``NDVI``, ``LULC``).

    ``mean``/``std`` are the published per-band statistics in chunk-file units (S2 with the +1000 offset;
    empty where none are published). ``valid_range`` is the typical range; values outside it do occur.
    ``n_timestamps`` is 1 for static modalities (DEM). ``known`` is False for a modality this schema does
    not describe, made from a file's own metadata by :func:`modality_from_metadata`.
    """

    name: str
    bands: tuple[str, ...]
    dtype: np.dtype
    units: str
    valid_range: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    offset: int = 0
    has_cloud_mask: bool = False
    n_timestamps: int = N_TIMESTAMPS
    known: bool = True
    description: str = field(default="", compare=False)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def static(self) -> bool:
        """One timestep only (DEM): ``T = 1`` where batches have a time axis (``[B, 1, C, H, W]``); with one
        timestamp asked for, ``[B, C, H, W]`` like every modality."""
        return self.n_timestamps == 1

    @property
    def has_stats(self) -> bool:
        return len(self.mean) == self.n_bands and len(self.std) == self.n_bands

    @property
    def chunks(self) -> tuple[int, int, int, int, int]:
        """Chunk shape of ``bands`` in a full file: one chunk per timestamp."""
        return (SAMPLES_PER_FILE, 1, self.n_bands, PATCH_SIZE, PATCH_SIZE)

    def stats(self, *, with_offset: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Published (mean, std), float64 ``[C]`` each, in stored units or with the S2 offset removed."""
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        if not with_offset:
            mean = mean - self.offset
        return mean, std

    def chunk_bytes(self, samples: int = SAMPLES_PER_FILE) -> int:
        """Decoded bytes of one timestamp chunk of ``bands``."""
        return samples * self.n_bands * PATCH_SIZE * PATCH_SIZE * self.dtype.itemsize


_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

S2L1C = Modality(
    name="S2L1C",
    bands=_S2_BANDS,
    dtype=np.dtype("int16"),
    units="DN + 1000 (reflectance = (DN - 1000) / 10000)",
    valid_range=(1000, 11000),
    mean=(2607.345, 2393.068, 2320.225, 2373.963, 2562.536, 3110.071, 3392.832, 3321.154, 3583.77, 1838.712,
          1021.753, 3205.112, 2545.798),
    std=(786.523, 849.702, 875.318, 1143.578, 1126.248, 1161.98, 1273.505, 1246.79, 1342.755, 576.795, 45.626,
         1340.347, 1145.036),
    offset=S2_OFFSET,
    has_cloud_mask=True,
    description="Sentinel-2 Level-1C top-of-atmosphere, 13 bands",
)
S2L2A = Modality(
    name="S2L2A",
    bands=tuple(b for b in _S2_BANDS if b != "B10"),
    dtype=np.dtype("int16"),
    units="DN + 1000 (reflectance = (DN - 1000) / 10000)",
    valid_range=(1000, 11000),
    mean=(1793.243, 1924.863, 2184.553, 2340.936, 2671.402, 3240.082, 3468.412, 3563.244, 3627.704, 3711.071,
          3416.714, 2849.625),
    std=(1160.144, 1201.092, 1219.943, 1397.225, 1400.035, 1373.136, 1429.17, 1485.025, 1447.836, 1652.703,
         1471.002, 1365.307),
    offset=S2_OFFSET,
    has_cloud_mask=True,
    description="Sentinel-2 Level-2A surface reflectance, 12 bands (no B10)",
)
S1GRD = Modality(
    name="S1GRD",
    bands=("vv", "vh"),
    dtype=np.dtype("float16"),
    units="dB, 10*log10(sigma0)",
    valid_range=(-50.0, 1.0),
    mean=(-12.577, -20.265),
    std=(5.179, 5.872),
    description="Sentinel-1 GRD backscatter, VV and VH in dB, aligned to the S2 L2A grid",
)
S2RGB = Modality(
    name="S2RGB",
    bands=("red", "green", "blue"),
    dtype=np.dtype("uint8"),
    units="8-bit display value",
    valid_range=(0, 255),
    mean=(100.708, 87.489, 61.932),
    std=(68.550, 47.647, 40.592),
    has_cloud_mask=True,
    description="True-colour RGB derived from S2 L2A B04/B03/B02",
)

DEM = Modality(
    name="DEM",
    bands=("dem",),
    dtype=np.dtype("float32"),  # not published; readers take the dtype from each member
    units="m above sea level (Copernicus DEM GLO-30)",
    valid_range=(-500.0, 9000.0),
    mean=(435.726,),
    std=(560.326,),
    n_timestamps=1,
    description="Copernicus DEM, one timestep (time = 0); WebDataset distribution only",
)
NDVI = Modality(
    name="NDVI",
    bands=("ndvi",),
    dtype=np.dtype("float32"),  # not published; readers take the dtype from each member
    units="NDVI (B08 - B04) / (B08 + B04)",
    valid_range=(-1.0, 1.0),
    mean=(0.327,),
    std=(0.322,),
    description="NDVI from S2 L2A per season; WebDataset distribution only",
)
LULC = Modality(
    name="LULC",
    bands=("lulc",),
    dtype=np.dtype("uint8"),  # not published; readers take the dtype from each member
    units="class id (see schema.LULC_CLASSES)",
    valid_range=(0, 255),
    mean=(),
    std=(),
    description="ESRI land use / land cover, augmented with cloud and snow classes per season; WebDataset only",
)

S1RTC = Modality(
    name="S1RTC",
    bands=("vv", "vh"),
    dtype=np.dtype("float32"),  # not published; readers take the dtype from each member
    units="dB, 10*log10(gamma0), radiometrically terrain-corrected",
    valid_range=(-50.0, 10.0),
    mean=(-10.93, -17.329),
    std=(4.391, 4.459),
    description="Sentinel-1 RTC backscatter, VV and VH in dB; TerraMesh's Major TOM subset only",
)

#: ESRI 10 m land-cover class ids (Impact Observatory); the dataset adds cloud and snow per season. The ids
#: follow the ESRI product; the dataset's exact augmentation codes are not published (inferred).
LULC_CLASSES: dict[int, str] = {0: "no data", 1: "water", 2: "trees", 4: "flooded vegetation", 5: "crops",
                                7: "built area", 8: "bare ground", 9: "snow/ice", 10: "clouds", 11: "rangeland"}

#: All known modalities by folder name: the chunk-file ones in the published folder order, then the three
#: added with the WebDataset distribution.
MODALITIES: dict[str, Modality] = {m.name: m for m in (S1GRD, S2L1C, S2L2A, S2RGB, DEM, NDVI, LULC, S1RTC)}
#: Modalities of the SSL4EO-S12 v1.1 WebDataset distribution.
SHARD_MODALITIES: tuple[str, ...] = ("S1GRD", "S2L1C", "S2L2A", "S2RGB", "DEM", "NDVI", "LULC")
#: Modalities of the chunk-file distribution (one folder each under a split).
CHUNK_MODALITIES: tuple[str, ...] = ("S1GRD", "S2L1C", "S2L2A", "S2RGB")
#: Which modality provides shared variables (coordinates, cloud mask) when several are read together.
REFERENCE_ORDER: tuple[str, ...] = ("S2L2A", "S2L1C", "S2RGB", "S1GRD", "S1RTC", "NDVI", "LULC", "DEM")
#: Modalities that carry the SEnSeI ``cloud_mask``, in order of preference.
CLOUD_MODALITIES: tuple[str, ...] = ("S2L2A", "S2L1C", "S2RGB")
#: CF units of every time variable the library writes.
TIME_UNITS = "nanoseconds since 1970-01-01"
#: Modalities the training loader reads by default.
DEFAULT_TRAIN_MODALITIES = ("S2L1C", "S2L2A", "S1GRD")
#: Bands of S2L2A from which S2RGB is made, in RGB order.
RGB_SOURCE_BANDS = ("B04", "B03", "B02")

#: Splits of the published dataset and their file counts.
SPLITS = {"train": 3812, "val": 34}
#: Locations per WebDataset shard (the last shard of a split holds fewer).
LOCATIONS_PER_SHARD = 512
#: Shard counts and locations of the published WebDataset splits (train: 476 x 512 + 256; val: 4 x 512 + 128).
SHARD_SPLITS = {"train": (477, 243_968), "val": (5, 2_176)}
_SHARD_RE = re.compile(r"^(?P<prefix>[a-z0-9]+)_shard_(?P<index>\d{6})\.tar$")


def shard_name(index: int, prefix: str = "ssl4eos12") -> str:
    """Published shard name: ``ssl4eos12_shard_000001.tar`` for ``index`` 1 (1-based); ``prefix`` names a
    corpus subset (TerraMesh's ``majortom_shard_000001.tar``)."""
    if index < 1:
        raise ValueError(f"shard index is 1-based, got {index}")
    return f"{prefix}_shard_{index:06d}.tar"


def parse_shard(name: str) -> tuple[str, int] | None:
    """``(subset prefix, index)`` of a shard name (``majortom_shard_000003.tar`` -> ``("majortom", 3)``), or ``None``."""
    match = _SHARD_RE.match(name.rsplit("/", 1)[-1])
    return (match["prefix"], int(match["index"])) if match else None


def parse_shard_name(name: str) -> int | None:
    """Index of a published shard name, or ``None``."""
    parsed = parse_shard(name)
    return parsed[1] if parsed else None


# -- corpora: SSL4EO-S12 v1.1 and TerraMesh, which carries it ------------------------------------------------

@dataclass(frozen=True)
class Subset:
    """A family of shards of a corpus: files ``{prefix}_shard_NNNNNN.tar`` numbered ``ranges[split]`` (first,
    last) as published, holding the ``modalities`` listed (a modality folder lacks the other subsets' shards)
    and ``samples[split]`` members in all, ``per_shard`` in each shard but the last (which holds the rest)."""

    prefix: str
    ranges: dict[str, tuple[int, int]]
    modalities: tuple[str, ...]
    samples: dict[str, int] = field(default_factory=dict)
    per_shard: int = 512

    def counts(self, split: str) -> list[int] | None:
        """Members of each published shard of ``split`` in numbering order, from the published totals alone;
        ``None`` where no total is published."""
        if split not in self.ranges or split not in self.samples:
            return None
        first, last = self.ranges[split]
        n = last - first + 1
        rest = self.samples[split] - self.per_shard * (n - 1)
        if not 0 < rest <= self.per_shard:
            raise AssertionError(f"{self.prefix} {split}: {self.samples[split]} members do not fill {n} shards")
        return [self.per_shard] * (n - 1) + [rest]


@dataclass(frozen=True)
class Corpus:
    """A dataset served as WebDataset shards of per-location ``.zarr.zip`` members.

    ``timestamps`` per member (SSL4EO-S12: 4 seasons; TerraMesh: 1); ``stats`` per modality ``(mean, std)``,
    the corpus's own published statistics, in the units of the values as its members store them (SSL4EO-S12
    shards: S2 offset removed); ``locations`` per split. ``as_stored``: values are delivered exactly as the
    members store them and the statistics apply to those, as the corpus's published loader does (TerraMesh:
    its S2 carries the +1000 offset of post-2022 processing already); the ``s2_offset`` convention is then not
    applied.
    """

    name: str
    subsets: tuple[Subset, ...]
    timestamps: int
    stats: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    locations: dict[str, int]
    description: str = ""
    as_stored: bool = False

    def subset(self, prefix: str) -> Subset | None:
        return next((s for s in self.subsets if s.prefix == prefix), None)

    def modality_stats(self, modality: str, *, with_offset: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, std)`` float64 ``[C]`` of ``modality`` in this corpus (S2 with the +1000 offset when
        ``with_offset``; as published for an ``as_stored`` corpus, whatever ``with_offset``), or ``None`` where
        none are published."""
        found = self.stats.get(modality)
        if found is None:
            return None
        mean, std = (np.asarray(v, dtype=np.float64) for v in found)
        mod = find_modality(modality)
        if with_offset and not self.as_stored and mod is not None and mod.offset:
            mean = mean + mod.offset
        return mean, std


SSL4EO_S12 = Corpus(
    name="ssl4eo-s12",
    subsets=(Subset("ssl4eos12", {"train": (1, 477), "val": (1, 5)}, SHARD_MODALITIES,
                    {"train": 243_968, "val": 2_176}, LOCATIONS_PER_SHARD),),
    timestamps=N_TIMESTAMPS,
    stats={m.name: (tuple(float(v) - m.offset for v in m.mean), m.std)
           for m in (S2L1C, S2L2A, S2RGB, S1GRD, DEM, NDVI) if m.mean},
    locations={"train": 243_968, "val": 2_176},
    description="SSL4EO-S12 v1.1: 4 seasons per location",
)
TERRAMESH = Corpus(
    name="terramesh",
    # Members per subset from the published totals (9,089,536 train, 89,088 val): "up to 10,240 samples" per
    # shard, filled shard by shard, agrees exactly with both totals and the shard numbering (inferred, so every
    # shard is checked against it as it streams). SSL4EO-S12's are its 243,968 + 2,176 locations x 4 seasons.
    subsets=(Subset("majortom", {"train": (1, 793), "val": (1, 8)},
                    ("S2L1C", "S2L2A", "S2RGB", "S1RTC", "NDVI", "LULC", "DEM"),
                    {"train": 8_113_664, "val": 80_384}, 10_240),
             Subset("ssl4eos12", {"train": (794, 889), "val": (9, 9)}, SHARD_MODALITIES,
                    {"train": 975_872, "val": 8_704}, 10_240)),
    timestamps=1,
    stats={
        "S2L1C": ((2357.090, 2137.398, 2018.799, 2082.998, 2295.663, 2854.548, 3122.860, 3040.571, 3306.491, 1473.849,
                   506.072, 2472.840, 1838.943),
                  (1673.639, 1722.641, 1602.205, 1873.138, 1866.055, 1779.839, 1776.496, 1724.114, 1771.041, 1079.786,
                   512.404, 1340.879, 1172.435)),
        "S2L2A": ((1390.461, 1503.332, 1718.211, 1853.926, 2199.116, 2779.989, 2987.025, 3083.248, 3132.235, 3162.989,
                   2424.902, 1857.665),
                  (2131.157, 2163.666, 2059.311, 2152.477, 2105.179, 1912.773, 1842.326, 1893.568, 1775.656, 1814.907,
                   1436.282, 1336.155)),
        "S2RGB": ((110.349, 99.507, 75.843), (69.905, 53.708, 53.378)),
        "S1GRD": ((-12.577, -20.265), (5.179, 5.872)),
        "S1RTC": ((-10.93, -17.329), (4.391, 4.459)),
        "NDVI": ((0.327,), (0.322,)),
        "DEM": ((651.663,), (928.168,)),
    },
    locations={"train": 9_089_536, "val": 89_088},
    description="TerraMesh (TerraMind's corpus): Major TOM and SSL4EO-S12 v1.1 locations, one timestamp each",
    as_stored=True,
)
#: The corpora by name.
CORPORA: dict[str, Corpus] = {c.name: c for c in (SSL4EO_S12, TERRAMESH)}


def s2_convention(corpus: Corpus, s2_offset: bool | None) -> bool | None:
    """The S2 convention delivered for ``corpus``: ``True`` (DN + 1000, the default) or ``False`` (offset
    removed) for SSL4EO-S12; ``None`` (as stored, the published loader's values) for an ``as_stored`` corpus,
    where an explicit ``s2_offset`` is refused: its members' values are not those of either convention."""
    if corpus.as_stored:
        if s2_offset is not None:
            raise ValueError(f"s2_offset={s2_offset!r}: {corpus.name} values are delivered as its members store them "
                             "(its S2 already carries the +1000 offset), as its published loader does; leave "
                             "s2_offset unset")
        return None
    return True if s2_offset is None else bool(s2_offset)


def get_corpus(name: str) -> Corpus:
    """The :class:`Corpus` called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in CORPORA:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(CORPORA)}")
    return CORPORA[name]


def detect_corpus(names: Iterable[str], *, complete: bool = False) -> Corpus:
    """The corpus whose shards these file names are: TerraMesh when a Major TOM shard is among them, or, for a
    ``complete`` listing of a folder, when its SSL4EO-S12 shards are numbered as in TerraMesh (after Major
    TOM's, not from 1); else SSL4EO-S12. A hand-picked list of SSL4EO-S12 shards may start anywhere."""
    parsed = [p for p in (parse_shard(n) for n in names) if p is not None]
    if any(prefix == "majortom" for prefix, _i in parsed):
        return TERRAMESH
    ssl = [i for prefix, i in parsed if prefix == "ssl4eos12"]
    if complete and ssl and min(ssl) > 1:
        return TERRAMESH
    return SSL4EO_S12


def published_shard_counts(split: str, names: Sequence[str], corpus: Corpus | None = None) -> list[int] | None:
    """Members per shard of a published split, from the published totals (SSL4EO-S12: 512 locations each, the
    rest in the last; TerraMesh: 10,240 samples each, the rest in each subset's last), when ``names`` (file names
    or paths, in order) are exactly the published shards of the subsets they name, each subset whole; else
    ``None`` (count them instead: a subset of shards, a renumbered copy or a reordered list holds other numbers).
    ``corpus`` defaults to SSL4EO-S12."""
    corpus = corpus or SSL4EO_S12
    base = _basenames(names)
    parsed = [parse_shard(n) for n in base]
    if not base or any(p is None for p in parsed):
        return None
    out: list[int] = []
    k = 0
    while k < len(base):
        prefix = parsed[k][0]  # type: ignore[index]
        sub = corpus.subset(prefix)
        counts = sub.counts(split) if sub is not None else None
        if sub is None or counts is None:
            return None
        first, last = sub.ranges[split]
        want = [shard_name(i, prefix) for i in range(first, last + 1)]
        if base[k: k + len(want)] != want:
            return None
        out += counts
        k += len(want)
    return out


def is_published_chunk_list(split: str, names: Sequence[str]) -> bool:
    """Whether ``names`` are exactly a published split's chunk file names in order (64 locations each)."""
    return split in SPLITS and _basenames(names) == [chunk_file_name(split, i) for i in range(1, SPLITS[split] + 1)]


def _basenames(names: Sequence[str]) -> list[str]:
    return [str(n).replace("\\", "/").rsplit("/", 1)[-1] for n in names]

_FILE_RE = re.compile(r"^ssl4eos12_(?P<split>[a-z]+)_seasonal_data_(?P<index>\d{6})\.zarr\.zip$")


def find_modality(name: str) -> Modality | None:
    """The known :class:`Modality` called ``name`` (case-insensitive), or ``None``."""
    for key, mod in MODALITIES.items():
        if key.lower() == str(name).lower():
            return mod
    return None


def get_modality(name: str) -> Modality:
    """The :class:`Modality` called ``name`` (case-insensitive); ``ValueError`` naming the known ones otherwise."""
    mod = find_modality(name)
    if mod is None:
        raise ValueError(f"unknown modality {name!r}; expected one of {', '.join(MODALITIES)}")
    return mod


def modality_name(name: str) -> str:
    """Canonical spelling of a modality name: the schema's for known ones, ``name`` itself for new ones
    (a modality the dataset grows later still reads; its facts come from the files)."""
    mod = find_modality(name)
    return mod.name if mod is not None else str(name)


def modality_from_metadata(name: str, dtype: np.dtype, bands: tuple[str, ...], n_timestamps: int,
                           has_cloud_mask: bool = False) -> Modality:
    """The schema's modality ``name`` when known, else one described by a file's own metadata (dtype, band
    names, time length); such a modality has no published statistics or typical range."""
    mod = find_modality(name)
    if mod is not None:
        return mod
    return Modality(name=str(name), bands=tuple(bands), dtype=np.dtype(dtype), units="as stored",
                    valid_range=(-np.inf, np.inf), mean=(), std=(), has_cloud_mask=has_cloud_mask,
                    n_timestamps=int(n_timestamps), known=False, description="not in this library's schema")


def reference_modality(names: Iterable[str]) -> str:
    """Of ``names``, the modality that provides shared variables (see :data:`REFERENCE_ORDER`)."""
    names = list(names)
    return next((m for m in REFERENCE_ORDER if m in names), names[0])


def chunk_file_name(split: str, index: int) -> str:
    """Published file name of chunk ``index`` (1-based) of ``split``: ``ssl4eos12_val_seasonal_data_000001.zarr.zip``."""
    if index < 1:
        raise ValueError(f"chunk file index is 1-based, got {index}")
    return f"ssl4eos12_{split}_seasonal_data_{index:06d}.zarr.zip"


def parse_chunk_file_name(name: str) -> tuple[str, int] | None:
    """``(split, index)`` of a published chunk file name, or ``None`` if ``name`` is not one."""
    match = _FILE_RE.match(name.rsplit("/", 1)[-1])
    if match is None:
        return None
    return match["split"], int(match["index"])


#: Folders of the raw per-band layout (SSL4EO-S12 v1): ``{s1,s2a,s2c}/{location}/{season}/{band}.tif``.
RAW_FOLDERS = {"S1GRD": "s1", "S2L2A": "s2a", "S2L1C": "s2c"}


def raw_band_file(modality: str, band: str) -> str:
    """File name of a band in the raw layout: S2 ``B1.tif`` (no leading zero), ``B8A.tif``; S1 ``VV.tif``."""
    if modality == "S1GRD":
        return f"{band.upper()}.tif"
    return f"B{int(band[1:])}.tif" if band[1:].isdigit() else f"{band}.tif"


def split_list_name(split: str) -> str:
    """Path of a split's file list relative to the dataset root: ``splits/ssl4eos12_val.txt``."""
    return f"splits/ssl4eos12_{split}.txt"


_KEY_RE = re.compile(r"^[a-z0-9]+_[a-z]+_[A-Za-z0-9.-]+$")


def location_key(value: Any) -> str:
    """The key of a location as shards name it: SSL4EO-S12's 7-digit id (``80717``, ``0080717``, a table's
    ``0080717_2`` -> ``0080717``) or a TerraMesh member key as it is (``ssl4eos12_val_0080385``)."""
    text = str(value).strip()
    head = text.split("_")[0]
    if head.isdigit() and len(head) <= SAMPLE_ID_WIDTH:
        return head.zfill(SAMPLE_ID_WIDTH)
    if _KEY_RE.match(text):
        return text
    raise ValueError(f"{value!r} is not a location id (7 digits, e.g. 0080717) nor a TerraMesh key "
                     "(e.g. ssl4eos12_val_0080385)")


def terramesh_key(prefix: str, split: str, number: int) -> str:
    """A TerraMesh member key: ``{prefix}_{split}_{number:07d}``, ``number`` running from 1 over the whole split,
    Major TOM's members first (the card's example ``ssl4eos12_val_0080385`` is the first SSL4EO-S12 val member:
    80,384 Major TOM val members come before it; Major TOM's own keys are not published, assumed alike)."""
    return f"{prefix}_{split}_{number:0{SAMPLE_ID_WIDTH}d}"


def season_of(value: Any) -> tuple[str, int]:
    """``(location, season)`` from a member's own ``sample`` coordinate: TerraMesh's SSL4EO-S12 members carry
    ``<7-digit id>_<season 0..3>`` (``0194630_1`` -> ``('0194630', 1)``); anything else (a Major TOM cell) is
    its own location with season ``-1``."""
    text = str(value).strip()
    head, _, tail = text.rpartition("_")
    if head.isdigit() and len(head) == SAMPLE_ID_WIDTH and tail.isdigit() and int(tail) < N_TIMESTAMPS:
        return head, int(tail)
    return text, -1


def sample_id(location: int | str) -> str:
    """Zero-padded 7-digit location id (``80717`` -> ``'0080717'``)."""
    text = str(location)
    if not text.isdigit() or len(text) > SAMPLE_ID_WIDTH:
        raise ValueError(f"location id must be at most {SAMPLE_ID_WIDTH} digits, got {location!r}")
    return text.zfill(SAMPLE_ID_WIDTH)
