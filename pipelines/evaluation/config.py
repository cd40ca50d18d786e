"""What ``jobs/evaluate.py`` scores: :class:`EvaluationConfig` (``--config`` YAML and ``--set KEY=VALUE``).

Its keys are flat (``--set crop_border=4``); :attr:`EvaluationConfig.protocol` gathers the scoring settings
into a :class:`~pipelines.evaluation.protocol.ValidationProtocol`, :meth:`EvaluationConfig.model_ref` the
model into a :class:`~pipelines.inference.loading.ModelRef`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from pipelines.common.errors import ConfigError
from pipelines.evaluation.protocol import ValidationProtocol
from pipelines.inference.loading import ModelRef
from vsr_models import ARCHITECTURES

DEFAULT_MODEL = "models:/ttvsr@champion"
PROTOCOL_FIELDS = tuple(f.name for f in fields(ValidationProtocol))
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class EvaluationConfig:
    """What ``jobs/evaluate.py`` scores: a model on one split of a prepared dataset, and where it logs."""

    # registry / run URI, checkpoint folder or model.pt; default models:/ttvsr@champion unless `official`
    model: str | None = None
    official: str | None = None  # an authors' released checkpoint (.pth), instead of `model`; needs `arch`
    arch: str | None = None  # architecture of `official`: a family of vsr_models.ARCHITECTURES
    data: str = "data/sample"  # prepared dataset folder (manifest.json + shards/): a path or a URI (s3://...)
    verify_data: bool = False  # check every shard's sha256 first (in Ray tasks); else manifest and sizes
    split: str = "val"
    channel: Literal["rgb", "y"] = "rgb"  # REDS4 / sample: rgb; Vid4, UDM10, Vimeo-90K-T (BD): y
    crop_border: int = 0
    centre_frame_only: bool = False
    mirror_times: int = 0  # Vimeo-90K-T with TTVSR: 2 (7 -> 28 frames, outputs averaged over copies)
    max_clips: int | None = None
    chunk: int | None = None  # temporal window for long clips on small memory
    # config fields of the network that keep its weights, e.g. {key_frame_stride: 5} (with_model_settings)
    model_settings: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"  # auto: a GPU when the Ray cluster has one, else a CPU; cpu; cuda
    output: str | None = None  # folder for per_clip.csv / per_clip.md (default: none written locally)
    log_to_mlflow: bool = True  # a new run in `experiment`: metrics, per-clip tables, what was evaluated
    experiment: str = "ray-vsr-evaluation"
    tracking_uri: str | None = None  # MLflow store for models:/ URIs and the run; default as in training

    def __post_init__(self) -> None:
        if self.arch is not None and self.arch not in ARCHITECTURES:
            raise ConfigError(
                f"--arch {self.arch!r} is not a known architecture: use one of {', '.join(sorted(ARCHITECTURES))}"
            )
        if self.official is not None and self.model is not None:
            raise ConfigError(f"give either --model ({self.model}) or --official ({self.official}), not both")
        if self.official is not None and self.arch is None:
            raise ConfigError(
                f"--official {self.official} needs --arch ttvsr|vsrt: the architecture of the released "
                "checkpoint"
            )
        if self.arch is not None and self.official is None:
            raise ConfigError(
                f"--arch {self.arch} applies only to a released checkpoint: add --official PATH, or drop "
                "--arch for this project's checkpoints and models:/ URIs"
            )
        if not _DEVICE.match(self.device):
            raise ConfigError(f"device {self.device!r} is not one of auto, cpu, cuda (or cuda:N)")

    @classmethod
    def of(cls, protocol: ValidationProtocol, **settings: Any) -> EvaluationConfig:
        """An evaluation scored as ``protocol`` says (on whole clips: a protocol with ``max_frames`` is
        refused), with the other ``settings`` (``model``, ``data``, ...) as given."""
        if protocol.max_frames is not None:
            raise ConfigError(
                f"an evaluation scores whole clips: its protocol cannot keep max_frames={protocol.max_frames}"
            )
        scoring = {name: value for name, value in asdict(protocol).items() if name != "max_frames"}
        return cls(**scoring, **settings)

    @property
    def source(self) -> str:
        """What is evaluated: ``official``, else ``model``, else ``models:/ttvsr@champion``."""
        return self.official or self.model or DEFAULT_MODEL

    @property
    def protocol(self) -> ValidationProtocol:
        """How the split is scored (whole clips: no ``max_frames``)."""
        return ValidationProtocol(
            **{name: getattr(self, name) for name in PROTOCOL_FIELDS if name != "max_frames"}
        )

    def model_ref(self, tracking_uri: str | None = None) -> ModelRef:
        """:attr:`source` as a :class:`ModelRef` (``arch`` for ``official``), in ``tracking_uri`` (the
        resolved store; default this config's ``tracking_uri``)."""
        return ModelRef(self.source, self.arch, tracking_uri or self.tracking_uri)
