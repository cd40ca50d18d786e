"""The prepared-dataset contract: ``manifest.json`` and where the shards are (``docs/data_format.md``).

Preparation (:mod:`pipelines.data.prepare`) writes it; ingestion, training, tuning and evaluation read it
through :func:`load_manifest` and :func:`check_dataset` only, so they never depend on how it was made.
A dataset may live on a local or NFS path or behind any filesystem URI (:mod:`pipelines.common.storage`).

Checking a dataset at the start of a job is fast: the manifest is read and every shard's presence and
size compared with it. The full check, every shard's sha256 (:func:`verify_shards`), runs when asked
(``--verify-data``) as parallel Ray tasks, each hashing a group of shards where it runs, never on the driver.
Preparation itself verifies checksums when it writes a shard and when it resumes.

Every shard path the manifest names must stay inside the dataset (relative, no ``..``): a manifest is
data from storage, and a doctored one must not make a job read (or hash) a file elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from pipelines.common.errors import DataError
from pipelines.common.storage import Location, iter_chunks, resolve, sha256_location
from pipelines.data.schema import FORMAT_VERSION, READABLE_FORMAT_VERSIONS

MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"
VERIFY_SHARDS_PER_TASK = 8  # shards one verification task hashes


class CorruptShard(DataError):
    """A shard that does not read (damaged bytes that the fast size check at start cannot see)."""


def corrupt_shard(uri: str, error: BaseException) -> CorruptShard:
    """The one-line error for a shard whose bytes do not read: names it, the cause and the fix."""
    cause = " ".join(str(error).split())[:200] or type(error).__name__
    return CorruptShard(
        f"{uri}: the shard does not read ({type(error).__name__}: {cause}); it is damaged. Check every "
        "shard with --verify-data, then re-run prepare with the same --output to rewrite the damaged ones"
    )


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


@dataclass
class Manifest:
    """A prepared dataset's ``manifest.json`` (format in ``docs/data_format.md``)."""

    location: Location
    data: dict
    sha256: str  # of the manifest's bytes: identifies this version of the dataset
    _records: dict | None = field(default=None, repr=False, compare=False)

    @property
    def root(self) -> str:
        """The dataset's path or URI, for messages."""
        return self.location.uri

    @property
    def scale(self) -> int:
        return self.data["scale"]

    @property
    def degradation(self) -> str:
        return self.data["degradation"]

    @property
    def splits(self) -> list[str]:
        return sorted(self.data["splits"])

    def clips(self, split: str | None = None) -> list[dict]:
        return [c for c in self.data["clips"] if split is None or c["split"] == split]

    def clip_records(self) -> dict[str, dict]:
        """Every clip's record by id (cached: a Vimeo-90K manifest lists tens of thousands)."""
        if self._records is None:
            self._records = {c["clip_id"]: c for c in self.data["clips"]}
        return self._records

    def shards(self, split: str | None = None) -> list[dict]:
        return [s for s in self.data["shards"] if split is None or s["split"] == split]

    def shard_locations(self, split: str) -> list[Location]:
        """The split's shard files; a missing split is a DataError listing the others."""
        if split not in self.data["splits"]:
            raise DataError(
                f"{self.root}: no split '{split}' in this prepared dataset (splits: {', '.join(self.splits)})"
            )
        return [self.location.join(s["path"]) for s in self.shards(split)]

    def shard_paths(self, split: str) -> list[str]:
        """The split's shard paths on :attr:`filesystem` (local paths for a local dataset)."""
        return [location.path for location in self.shard_locations(split)]

    @property
    def filesystem(self):
        return self.location.fs


def _fix(root: str) -> str:
    return f"Re-run prepare with the same --output {root} to rewrite it, or delete {root} and prepare again."


def load_manifest(data_dir, verify: bool = False) -> Manifest:
    """Read ``manifest.json`` and check every shard is there with its size (fast).

    ``verify`` also compares every shard's sha256 with the manifest (:func:`verify_shards`).
    """
    location = resolve(data_dir)
    root = location.uri
    manifest_file = location.join(MANIFEST_NAME)
    if not manifest_file.is_file():
        raise DataError(
            f"{root}: no {MANIFEST_NAME}: not a prepared dataset, or its preparation did not finish. "
            f"Run `python jobs/prepare_data.py --output {root} ...` (re-running resumes)."
        )
    try:
        raw = manifest_file.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(
            f"{manifest_file.uri}: does not read as a manifest ({type(error).__name__}: {error}); the file is "
            f"damaged. Re-run `python jobs/prepare_data.py --output {root} ...` with the original source to "
            "rewrite it"
        ) from None
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
    manifest = Manifest(location, data, hashlib.sha256(raw).hexdigest())
    _check_shard_sizes(manifest)
    if verify:
        verify_shards(manifest)
    return manifest


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


def _check_shard_sizes(manifest: Manifest) -> None:
    """Every shard the manifest lists exists with the size it lists: one listing call per dataset."""
    shards = manifest.data["shards"]
    if not shards:
        return
    infos = manifest.filesystem.get_file_info([manifest.location.join(s["path"]).path for s in shards])
    for shard, info in zip(shards, infos, strict=True):
        uri = manifest.location.join(shard["path"]).uri
        if info.type != pafs.FileType.File:
            raise DataError(f"{uri}: shard listed in the manifest is missing. {_fix(manifest.root)}")
        if info.size != shard["bytes"]:
            raise DataError(
                f"{uri}: {info.size} bytes but the manifest lists {shard['bytes']} (the shard is cut short or "
                f"was changed). {_fix(manifest.root)}"
            )


def hash_shards(root_uri: str, paths: list[str]) -> list[str]:
    """sha256 of each shard ``paths`` (relative to the dataset); runs in a Ray task, or here without Ray."""
    root = resolve(root_uri)
    return [sha256_location(root.join(path)) for path in paths]


def verify_shards(manifest: Manifest) -> None:
    """Compare every shard's sha256 with the manifest; the first mismatch is a :class:`DataError`.

    With Ray running, groups of :data:`VERIFY_SHARDS_PER_TASK` shards are hashed in parallel Ray tasks
    (spread over the cluster; each reads its shards from the dataset's storage); without Ray, here.
    """
    import ray

    shards = manifest.data["shards"]
    groups = list(iter_chunks([s["path"] for s in shards], VERIFY_SHARDS_PER_TASK))
    if ray.is_initialized():
        task = ray.remote(hash_shards).options(num_cpus=1, scheduling_strategy="SPREAD", name="verify shards")
        digests = ray.get([task.remote(manifest.root, group) for group in groups])
    else:
        digests = [hash_shards(manifest.root, group) for group in groups]
    for shard, digest in zip(shards, [d for group in digests for d in group], strict=True):
        if digest != shard["sha256"]:
            raise DataError(
                f"{manifest.location.join(shard['path']).uri}: sha256 does not match the manifest (the shard is "
                f"corrupt or was changed). {_fix(manifest.root)}"
            )


def check_dataset(data_dir, splits: list[str], verify: bool = False) -> Manifest:
    """The dataset's manifest, or a :class:`DataError` naming the command that prepares it / the splits it has.

    Fast by default (manifest, shard presence and sizes); ``verify`` adds every shard's checksum.
    """
    location = resolve(data_dir)
    if not location.join(MANIFEST_NAME).is_file():
        raise DataError(
            f"no prepared dataset at {data_dir} (no {MANIFEST_NAME}). Prepare it first, e.g. "
            f"`python jobs/prepare_data.py --dataset sample --output {data_dir}` for the built-in sample, or "
            f"`python jobs/prepare_data.py --source <your data> --output {data_dir}`; "
            "then point data.path at it (--set data.path=...)"
        )
    manifest = load_manifest(location, verify=verify)
    for split in splits:
        if split not in manifest.splits:
            raise DataError(
                f"split '{split}' is not in {data_dir} (its splits: {', '.join(manifest.splits)})"
            )
    return manifest
