"""The prepared-dataset contract: ``manifest.json`` and where the shards are (``docs/data_format.md``).

Preparation (:mod:`pipelines.data.prepare`) writes it; ingestion, training, tuning and evaluation read it
through :func:`load_manifest` and :func:`check_dataset` only, so they never depend on how it was made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.common.errors import DataError
from pipelines.common.files import sha256_file
from pipelines.data.schema import FORMAT_VERSION

MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"


@dataclass
class Manifest:
    """A prepared dataset's ``manifest.json`` (format in ``docs/data_format.md``)."""

    root: Path
    data: dict

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

    def shards(self, split: str | None = None) -> list[dict]:
        return [s for s in self.data["shards"] if split is None or s["split"] == split]

    def shard_paths(self, split: str) -> list[Path]:
        """Absolute paths of the split's shards; a missing split is a DataError listing the others."""
        if split not in self.data["splits"]:
            raise DataError(
                f"{self.root}: no split '{split}' in this prepared dataset (splits: {', '.join(self.splits)})"
            )
        return [self.root / s["path"] for s in self.shards(split)]


def load_manifest(data_dir: str | Path, verify: bool = True) -> Manifest:
    """Read ``manifest.json``; with ``verify`` refuse any shard whose sha256 differs from the manifest's."""
    root = Path(data_dir).expanduser().resolve()
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{root}: no {MANIFEST_NAME}: not a prepared dataset, or its preparation did not finish. "
            f"Run `python jobs/prepare_data.py --output {root} ...` (re-running resumes)."
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(
            f"{path}: does not read as a manifest ({type(error).__name__}: {error}); the file is damaged. "
            f"Re-run `python jobs/prepare_data.py --output {root} ...` with the original source to rewrite it"
        ) from None
    if not isinstance(data, dict) or not {"shards", "clips", "splits", "scale"} <= data.keys():
        raise DataError(
            f"{path}: not a ray-vsr manifest (missing shards / clips / splits / scale); prepare the dataset "
            f"again with `python jobs/prepare_data.py --output {root} ...`"
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format version {data.get('format_version')} but this code reads {FORMAT_VERSION}; "
            "prepare the dataset again"
        )
    if verify:
        for shard in data["shards"]:
            file = root / shard["path"]
            if not file.is_file():
                raise DataError(
                    f"{file}: shard listed in the manifest is missing. Re-run prepare with the same "
                    f"--output {root} to rewrite it, or delete {root} and prepare again."
                )
            if sha256_file(file) != shard["sha256"]:
                raise DataError(
                    f"{file}: sha256 does not match the manifest (the shard is corrupt or was changed). "
                    f"Re-run prepare with the same --output {root} to rewrite it, or delete {root} and "
                    "prepare again."
                )
    return Manifest(root, data)


def check_dataset(data_dir: str | Path, splits: list[str]) -> Manifest:
    """The dataset's manifest, or a :class:`DataError` naming the command that prepares it / the splits it has."""
    manifest_file = Path(data_dir) / MANIFEST_NAME
    if not manifest_file.is_file():
        raise DataError(
            f"no prepared dataset at {data_dir} (no {MANIFEST_NAME}). Prepare it first, e.g. "
            f"`python jobs/prepare_data.py --dataset sample --output {data_dir}` for the built-in sample, or "
            f"`python jobs/prepare_data.py --source <your data> --output {data_dir}`; "
            "then point data.path at it (--set data.path=...)"
        )
    manifest = load_manifest(data_dir)
    for split in splits:
        if split not in manifest.splits:
            raise DataError(
                f"split '{split}' is not in {data_dir} (its splits: {', '.join(manifest.splits)})"
            )
    return manifest
