"""The prepared-dataset contract: ``manifest.json``, its typed records, and where the shards are (``docs/data_format.md``).

This is the only module that writes or parses ``manifest.json``. Preparation (:mod:`pipelines.data.prepare`)
builds a :class:`Manifest` from its shards' records and writes it with :func:`write_manifest`; ingestion,
training, tuning and evaluation open a dataset once with :func:`open_dataset` and pass the
:class:`PreparedDataset` it returns (or its :meth:`~PreparedDataset.only` copy, what travels to Ray
workers) down, so they never depend on how it was made and never read the file again. A dataset may
live on a local or NFS path or behind any filesystem URI (:mod:`pipelines.common.storage`).

Opening a dataset at the start of a job is fast: the manifest is read and every shard's presence and
size compared with it. The full check, every shard's sha256 (:func:`verify_shards`), runs when asked
(``--verify-data``) as parallel Ray tasks, each hashing a group of shards where it runs, never on the driver.
Preparation itself verifies checksums when it writes a shard and when it resumes.

Every shard path the manifest names must stay inside the dataset (relative, no ``..``): a manifest is
data from storage, and a doctored one must not make a job read (or hash) a file elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pyarrow.fs as pafs

from pipelines.common.errors import DataError
from pipelines.common.storage import Location, iter_chunks, resolve, sha256_location
from pipelines.data.schema import FORMAT_VERSION, READABLE_FORMAT_VERSIONS

MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"
VERIFY_SHARDS_PER_TASK = 8  # shards one verification task hashes
# Manifest fields that say what a prepared dataset is; a run that differs in one makes another dataset.
IDENTITY_FIELDS = ("degradation", "scale", "clip_length")


class CorruptShard(DataError):
    """A shard that does not read (damaged bytes that the fast size check at start cannot see)."""


def corrupt_shard(uri: str, error: BaseException) -> CorruptShard:
    """The one-line error for a shard whose bytes do not read: names it, the cause and the fix."""
    cause = " ".join(str(error).split())[:200] or type(error).__name__
    return CorruptShard(
        f"{uri}: the shard does not read ({type(error).__name__}: {cause}); it is damaged. Check every "
        "shard with --verify-data, then re-run prepare with the same --output to rewrite the damaged ones"
    )


# ---------------------------------------------------------------------------------------------------
# the records (their JSON is the format of docs/data_format.md#manifestjson, keys in the order written)


def _pair(value) -> tuple[int, int]:
    first, second = value
    return int(first), int(second)


@dataclass(frozen=True)
class ClipRecord:
    """One clip: where it came from, its sizes, and where it is stored (its shard and segments)."""

    clip_id: str
    split: str
    shard: str  # path of its shard, relative to the dataset
    source: str  # clip folder or video file, relative to the source root
    frame_start: int  # index of its first frame within the source
    num_frames: int
    hr_size: tuple[int, int]  # (h, w) after cropping to a multiple of the scale
    lr_size: tuple[int, int]
    source_size: tuple[int, int]
    cropped: bool  # HR cropped at the bottom / right to a multiple of the scale
    row_groups: tuple[int, int] | None = None  # (first row group, segments) in its shard; None: version 1

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClipRecord:
        row_groups = data.get("row_groups")
        return cls(
            clip_id=str(data["clip_id"]),
            split=str(data["split"]),
            shard=data["shard"],
            source=data["source"],
            frame_start=int(data["frame_start"]),
            num_frames=int(data["num_frames"]),
            hr_size=_pair(data["hr_size"]),
            lr_size=_pair(data["lr_size"]),
            source_size=_pair(data["source_size"]),
            cropped=bool(data["cropped"]),
            row_groups=None if row_groups is None else _pair(row_groups),
        )

    def to_json(self) -> dict[str, Any]:
        data = {
            "clip_id": self.clip_id,
            "split": self.split,
            "shard": self.shard,
            "source": self.source,
            "frame_start": self.frame_start,
            "num_frames": self.num_frames,
            "hr_size": list(self.hr_size),
            "lr_size": list(self.lr_size),
            "source_size": list(self.source_size),
            "cropped": self.cropped,
        }
        return data if self.row_groups is None else data | {"row_groups": list(self.row_groups)}


@dataclass(frozen=True)
class ShardRecord:
    """One shard file: its path (relative to the dataset), split, size, checksum and clips in row order."""

    path: str
    split: str
    rows: int  # clips it holds
    bytes: int
    sha256: str
    clips: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardRecord:
        return cls(
            path=data["path"],
            split=str(data["split"]),
            rows=int(data["rows"]),
            bytes=int(data["bytes"]),
            sha256=data["sha256"],
            clips=tuple(data["clips"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "split": self.split,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "clips": list(self.clips),
        }


@dataclass(frozen=True)
class SplitRecord:
    """One split's totals."""

    name: str
    clips: int
    frames: int


@dataclass(frozen=True)
class SourceRecord:
    """What a dataset was prepared from: the source root, as asked, its layout and fingerprint."""

    path: str
    requested: str
    layout: str
    fingerprint: Mapping[str, Any]  # {"method", "sha256", "files", "bytes"} (sources.fingerprint)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "requested": self.requested,
            "layout": self.layout,
            "fingerprint": dict(self.fingerprint),
        }


# Fields a manifest may lack and still read: segment_frames (version 1) and the descriptive ones.
_OPTIONAL = (
    "project_version",
    "created",
    "source",
    "degradation",
    "clip_length",
    "frame_codec",
    "segment_frames",
    "crop",
    "quarantined",
    "warnings",
)


@dataclass(frozen=True)
class Manifest:
    """A prepared dataset's ``manifest.json``, typed (format in ``docs/data_format.md``).

    ``quarantined`` (``{"input", "reason"}``) and ``warnings`` (``{"input", ["clip_id",] "message"}``)
    are notes for people, kept as written. ``None`` marks a field the file does not have (a version-1
    manifest has no ``segment_frames``); :meth:`to_json` leaves it out, so a manifest reads back and
    writes the bytes it was read from.
    """

    format_version: int
    scale: int
    splits: tuple[SplitRecord, ...]
    shards: tuple[ShardRecord, ...]
    clips: tuple[ClipRecord, ...]
    project_version: str | None = None
    created: str | None = None
    source: SourceRecord | None = None
    degradation: str | None = None
    clip_length: int | None = None
    frame_codec: Mapping[str, Any] | None = None
    segment_frames: int | None = None  # frames per stored segment (version 2)
    crop_policy: str | None = None
    cropped_clips: tuple[str, ...] | None = None
    quarantined: tuple[Mapping[str, str], ...] | None = None
    warnings: tuple[Mapping[str, str], ...] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """The typed manifest of a parsed ``manifest.json`` (KeyError / TypeError / ValueError if malformed)."""
        source = data.get("source")
        crop = data.get("crop")
        return cls(
            format_version=data["format_version"],
            scale=int(data["scale"]),
            splits=tuple(
                SplitRecord(str(name), int(entry["clips"]), int(entry["frames"]))
                for name, entry in data["splits"].items()
            ),
            shards=tuple(ShardRecord.from_json(s) for s in data["shards"]),
            clips=tuple(ClipRecord.from_json(c) for c in data["clips"]),
            project_version=data.get("project_version"),
            created=data.get("created"),
            source=None
            if source is None
            else SourceRecord(
                source["path"], source.get("requested"), source.get("layout"), source.get("fingerprint")
            ),
            degradation=data.get("degradation"),
            clip_length=data.get("clip_length"),
            frame_codec=data.get("frame_codec"),
            segment_frames=data.get("segment_frames"),
            crop_policy=None if crop is None else crop["policy"],
            cropped_clips=None if crop is None else tuple(crop["cropped_clips"]),
            quarantined=_notes(data.get("quarantined")),
            warnings=_notes(data.get("warnings")),
        )

    def to_json(self) -> dict[str, Any]:
        """What ``manifest.json`` holds (:func:`write_manifest` writes it)."""
        crop = None
        if self.crop_policy is not None:
            crop = {"policy": self.crop_policy, "cropped_clips": list(self.cropped_clips or ())}
        data = {
            "format_version": self.format_version,
            "project_version": self.project_version,
            "created": self.created,
            "source": None if self.source is None else self.source.to_json(),
            "degradation": self.degradation,
            "scale": self.scale,
            "clip_length": self.clip_length,
            "frame_codec": None if self.frame_codec is None else dict(self.frame_codec),
            "segment_frames": self.segment_frames,
            "crop": crop,
            "splits": _splits_json(self.splits),
            "shards": [s.to_json() for s in self.shards],
            "clips": [c.to_json() for c in self.clips],
            "quarantined": None if self.quarantined is None else [dict(q) for q in self.quarantined],
            "warnings": None if self.warnings is None else [dict(w) for w in self.warnings],
        }
        return {k: v for k, v in data.items() if v is not None or k not in _OPTIONAL}


def _splits_json(splits: Iterable[SplitRecord]) -> dict[str, dict[str, int]]:
    return {s.name: {"clips": s.clips, "frames": s.frames} for s in splits}


def _notes(entries) -> tuple[Mapping[str, str], ...] | None:
    return None if entries is None else tuple(dict(e) for e in entries)


def split_totals(clips: Iterable[ClipRecord]) -> tuple[SplitRecord, ...]:
    """Clips and frames per split, splits in the order their first clip comes."""
    totals: dict[str, list[int]] = {}
    for clip in clips:
        entry = totals.setdefault(clip.split, [0, 0])
        entry[0] += 1
        entry[1] += clip.num_frames
    return tuple(SplitRecord(name, clips, frames) for name, (clips, frames) in totals.items())


# ---------------------------------------------------------------------------------------------------
# an opened dataset


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset, opened and checked once (:func:`open_dataset`): where it is, its manifest and
    the manifest's sha256. Small and picklable (the filesystem pickles with its location), so it is
    what jobs hand to ingestion and, through :meth:`only`, to Ray workers.
    """

    location: Location
    manifest: Manifest
    sha256: str  # of the manifest's bytes: identifies this version of the dataset

    @property
    def root(self) -> str:
        """The dataset's path or URI, for messages."""
        return self.location.uri

    @property
    def fingerprint(self) -> str:
        """The sha256 of ``manifest.json``'s bytes (the dataset version a run trained on)."""
        return self.sha256

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self.location.fs

    @property
    def scale(self) -> int:
        return self.manifest.scale

    @property
    def degradation(self) -> str | None:
        return self.manifest.degradation

    @property
    def split_names(self) -> list[str]:
        return sorted(s.name for s in self.manifest.splits)

    def clips(self, split: str | None = None) -> tuple[ClipRecord, ...]:
        return tuple(c for c in self.manifest.clips if split is None or c.split == split)

    def shards(self, split: str | None = None) -> tuple[ShardRecord, ...]:
        return tuple(s for s in self.manifest.shards if split is None or s.split == split)

    def profile(self) -> dict[str, Any]:
        """What the dataset holds, in a few numbers (logged with a run's dataset input)."""
        return {
            "clips": len(self.manifest.clips),
            "frames": sum(c.num_frames for c in self.manifest.clips),
            "splits": _splits_json(self.manifest.splits),
            "scale": self.scale,
            "degradation": self.degradation,
            "source": None if self.manifest.source is None else self.manifest.source.path,
        }

    def clip(self, clip_id: str) -> ClipRecord:
        """One clip's record by id (indexed once: a Vimeo-90K manifest lists tens of thousands)."""
        return self._clips_by_id[clip_id]

    @cached_property
    def _clips_by_id(self) -> dict[str, ClipRecord]:
        return {c.clip_id: c for c in self.manifest.clips}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_clips_by_id"}  # rebuilt where needed

    def check_split(self, split: str) -> None:
        """A split the dataset lacks is a DataError listing the others."""
        if split not in self.split_names:
            raise DataError(
                f"{self.root}: no split '{split}' in this prepared dataset (splits: {', '.join(self.split_names)})"
            )

    def shard_locations(self, split: str) -> list[Location]:
        """The split's shard files; a missing split is a DataError listing the others."""
        self.check_split(split)
        return [self.location.join(s.path) for s in self.shards(split)]

    def shard_paths(self, split: str) -> list[str]:
        """The split's shard paths on :attr:`filesystem` (local paths for a local dataset)."""
        return [location.path for location in self.shard_locations(split)]

    def only(self, splits: Iterable[str]) -> PreparedDataset:
        """A smaller copy holding only ``splits``' records (what travels to Ray workers).

        Its manifest is not the file's (no notes, fewer records); :attr:`fingerprint` still names the file.
        """
        wanted = set(splits)
        for split in sorted(wanted):
            self.check_split(split)
        clips = tuple(c for c in self.manifest.clips if c.split in wanted)
        kept = {c.clip_id for c in clips}
        cropped = self.manifest.cropped_clips
        manifest = dataclasses.replace(
            self.manifest,
            splits=tuple(s for s in self.manifest.splits if s.name in wanted),
            shards=tuple(s for s in self.manifest.shards if s.split in wanted),
            clips=clips,
            cropped_clips=None if cropped is None else tuple(c for c in cropped if c in kept),
            quarantined=(),
            warnings=(),
        )
        return PreparedDataset(self.location, manifest, self.sha256)


# ---------------------------------------------------------------------------------------------------
# opening, checking, writing


def _inside_dataset(path) -> bool:
    """``path`` is a relative POSIX path below the dataset root (no absolute path, URI, ``..`` or ``\\``)."""
    if not isinstance(path, str) or not path or "\\" in path or "\0" in path or ":" in path:
        return False
    parts = path.split("/")
    return (
        not path.startswith("/")
        and ".." not in parts
        and "" not in parts
        and posixpath.normpath(path) == path
    )


def _fix(root: str) -> str:
    return f"Re-run prepare with the same --output {root} to rewrite it, or delete {root} and prepare again."


def open_dataset(location, *, splits: Iterable[str] = (), verify: bool = False) -> PreparedDataset:
    """Open the prepared dataset at ``location`` (a path, URI or :class:`Location`): read and check its
    manifest and that every shard is there with its size (fast), and that it has ``splits``.

    ``verify`` also compares every shard's sha256 with the manifest (:func:`verify_shards`). A missing
    dataset is a :class:`DataError` naming the command that prepares it; a missing split one naming the
    splits it has.
    """
    resolved = resolve(location)
    if not resolved.join(MANIFEST_NAME).is_file():
        given = os.fspath(location) if not isinstance(location, Location) else location.uri
        raise DataError(
            f"no prepared dataset at {given} (no {MANIFEST_NAME}). Prepare it first, e.g. "
            f"`python jobs/prepare_data.py --dataset sample --output {given}` for the built-in sample, or "
            f"`python jobs/prepare_data.py --source <your data> --output {given}`; "
            "then point data.path at it (--set data.path=...)"
        )
    dataset = _read(resolved, verify)
    for split in splits:
        if split not in dataset.split_names:
            given = os.fspath(location) if not isinstance(location, Location) else location.uri
            raise DataError(
                f"split '{split}' is not in {given} (its splits: {', '.join(dataset.split_names)})"
            )
    return dataset


def _read(location: Location, verify: bool) -> PreparedDataset:
    """Read and check ``manifest.json`` (format, paths inside, shard sizes; checksums if ``verify``)."""
    root = location.uri
    manifest_file = location.join(MANIFEST_NAME)  # there: open_dataset checked
    try:
        raw = manifest_file.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _unreadable(manifest_file.uri, root, error) from None
    if not isinstance(data, dict) or not {"shards", "clips", "splits", "scale"} <= data.keys():
        raise DataError(
            f"{manifest_file.uri}: not a ray-vsr manifest (missing shards / clips / splits / scale); prepare "
            f"the dataset again with `python jobs/prepare_data.py --output {root} ...`"
        )
    if data.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise DataError(
            f"{manifest_file.uri}: format version {data.get('format_version')} but this code reads "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))} (writes {FORMAT_VERSION}); prepare the dataset again"
        )
    _check_paths_inside(manifest_file.uri, root, data)
    try:
        manifest = Manifest.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise _unreadable(manifest_file.uri, root, error) from None
    dataset = PreparedDataset(location, manifest, hashlib.sha256(raw).hexdigest())
    _check_shard_sizes(dataset)
    if verify:
        verify_shards(dataset)
    return dataset


def _unreadable(manifest_uri: str, root: str, error: BaseException) -> DataError:
    return DataError(
        f"{manifest_uri}: does not read as a manifest ({type(error).__name__}: {error}); the file is "
        f"damaged. Re-run `python jobs/prepare_data.py --output {root} ...` with the original source to "
        "rewrite it"
    )


def _check_paths_inside(manifest_uri: str, root: str, data: dict) -> None:
    """Every shard path the manifest names stays inside the dataset, before any of them is opened."""
    named = [s.get("path") if isinstance(s, dict) else s for s in data["shards"]]
    named += [c.get("shard") for c in data["clips"] if isinstance(c, dict) and "shard" in c]
    for path in named:
        if not _inside_dataset(path):
            raise DataError(
                f"{manifest_uri}: names the shard path {str(path)[:120]!r}, which is not inside the dataset "
                "(absolute, a URI or with '..'); the manifest was changed. Prepare the dataset again with "
                f"`python jobs/prepare_data.py --output {root} ...`"
            )


def _check_shard_sizes(dataset: PreparedDataset) -> None:
    """Every shard the manifest lists exists with the size it lists: one listing call per dataset."""
    shards = dataset.manifest.shards
    if not shards:
        return
    infos = dataset.filesystem.get_file_info([dataset.location.join(s.path).path for s in shards])
    for shard, info in zip(shards, infos, strict=True):
        uri = dataset.location.join(shard.path).uri
        if info.type != pafs.FileType.File:
            raise DataError(f"{uri}: shard listed in the manifest is missing. {_fix(dataset.root)}")
        if info.size != shard.bytes:
            raise DataError(
                f"{uri}: {info.size} bytes but the manifest lists {shard.bytes} (the shard is cut short or "
                f"was changed). {_fix(dataset.root)}"
            )


def hash_shards(root_uri: str, paths: list[str]) -> list[str]:
    """sha256 of each shard ``paths`` (relative to the dataset); runs in a Ray task, or here without Ray."""
    root = resolve(root_uri)
    return [sha256_location(root.join(path)) for path in paths]


def verify_shards(dataset: PreparedDataset) -> None:
    """Compare every shard's sha256 with the manifest; the first mismatch is a :class:`DataError`.

    With Ray running, groups of :data:`VERIFY_SHARDS_PER_TASK` shards are hashed in parallel Ray tasks
    (spread over the cluster; each reads its shards from the dataset's storage); without Ray, here.
    """
    import ray

    shards = dataset.manifest.shards
    groups = list(iter_chunks([s.path for s in shards], VERIFY_SHARDS_PER_TASK))
    if ray.is_initialized():
        task = ray.remote(hash_shards).options(num_cpus=1, scheduling_strategy="SPREAD", name="verify shards")
        digests = ray.get([task.remote(dataset.root, group) for group in groups])
    else:
        digests = [hash_shards(dataset.root, group) for group in groups]
    for shard, digest in zip(shards, [d for group in digests for d in group], strict=True):
        if digest != shard.sha256:
            raise DataError(
                f"{dataset.location.join(shard.path).uri}: sha256 does not match the manifest (the shard is "
                f"corrupt or was changed). {_fix(dataset.root)}"
            )


def write_manifest(output: Location, manifest: Manifest) -> None:
    """Write ``manifest.json`` into ``output`` atomically (preparation's last step)."""
    output.join(MANIFEST_NAME).write_json_atomic(manifest.to_json())


def read_identity(output: Location) -> tuple[str, dict[str, Any]]:
    """The source path and :data:`IDENTITY_FIELDS` of the manifest in ``output`` (a re-run's check that it
    replaces the same dataset); OSError, ValueError, KeyError or TypeError when it does not read."""
    data = output.join(MANIFEST_NAME).read_json()
    return data["source"]["path"], {key: data[key] for key in IDENTITY_FIELDS}
