"""Training configuration and result: plain dataclasses, written next to the bundle as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Mode = Literal["probe", "finetune", "scratch"]
Augment = Literal["none", "light", "default", "heavy"]
MODES = ("probe", "finetune", "scratch")
AUGMENTS = ("none", "light", "default", "heavy")


@dataclass
class TrainConfig:
    """Everything that decides a training run (``config.json`` in the run folder)."""

    mode: Mode = "probe"
    backbone: str = "default"
    epochs: int | None = None  # None: 15 (finetune) / 30 (scratch); unused by the probe
    # None: "light" (fine-tuning) / "default" (from scratch): on 300 flowers5 photos, light augmentation with the
    # higher learning rate fine-tuned 3.4 points better than "default" at 1e-3 over 4 seeds (bench/finetune_recipes.py)
    augment: Augment | None = None
    image_size: int | None = None  # None: the backbone's (scratch: 128)
    batch_size: int = 32
    lr: float | None = None  # None: 3e-3 (the head when fine-tuning, backbone 10x lower; earlier releases 1e-3) /
    # 3e-3 (scratch); measured with the augmentation default above
    weight_decay: float = 0.05
    patience: int = 4  # early stopping: epochs without validation improvement
    seed: int = 0
    multi_label: bool | None = None  # None: as the dataset says
    val_fraction: float = 0.2  # used only when the dataset has no validation split
    balance: Literal["auto", "on", "off"] = "auto"  # class-weighted loss; auto: on when imbalance >= 3
    unknown_coverage: float | None = 0.95  # accept this fraction of known-class images; None: no "unknown"
    # what "unknown" is decided on: "auto" chooses a known-class score by measurement (imclass.models.open_set),
    # "probability" keeps the calibrated top probability (the only score of earlier releases)
    unknown_score: Literal["auto", "probability"] = "auto"
    calibrate: bool = True
    device: str = "auto"
    workers: int | None = None  # decode threads (embeddings, validation passes)
    loader_workers: int | None = None  # data-loader processes for fine-tuning; None: up to 4
    devices: int = 1  # fine-tuning processes (data parallel, DDP); batch_size stays the global batch
    hierarchy: bool = False  # nested class folders / "a/b" labels are label paths (load_dataset(hierarchy=True))
    # fine-tuning's forward pass: auto = bf16 autocast on CPUs with native bf16 (IMCLASS_NO_BF16=1: fp32), float16
    # autocast on CUDA, fp32 elsewhere; weights, gradients and optimiser always float32 (training/precision.py)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # timm's fine-tuning recipes (finetune and scratch; the probe ignores them); off by default
    layer_decay: float | None = None  # finetune: each backbone layer group's LR x this per group below the top one
    mixup: float = 0.0  # Mixup alpha (timm.data.Mixup; 0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off; with mixup too, each batch is one or the other)
    ema: float | None = None  # decay of an exponential moving average of the weights, validated and kept

    def __post_init__(self) -> None:
        from ..errors import ParameterError

        if self.mode not in MODES:
            raise ParameterError("mode", f"must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.augment is not None and self.augment not in AUGMENTS:
            raise ParameterError("augment", f"must be one of {', '.join(AUGMENTS)}, not {self.augment!r}")
        if self.balance not in ("auto", "on", "off"):
            raise ParameterError("balance", "must be auto, on or off")
        if self.unknown_coverage is not None and not 0.5 <= self.unknown_coverage <= 1.0:
            raise ParameterError("unknown_coverage", "must be between 0.5 and 1.0 (e.g. 0.95)")
        if self.unknown_score not in ("auto", "probability"):
            raise ParameterError("unknown_score", "must be auto or probability")
        if not 0.0 < self.val_fraction < 0.9:
            raise ParameterError("val_fraction", "must be between 0 and 0.9")
        if self.epochs is not None and self.epochs < 1:
            raise ParameterError("epochs", "must be >= 1")
        if self.batch_size < 1:
            raise ParameterError("batch_size", "must be >= 1")
        if self.devices < 1:
            raise ParameterError("devices", "must be >= 1")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ParameterError("precision", f"must be auto, fp32 or bf16, not {self.precision!r}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ParameterError("layer_decay", f"must be in (0, 1] (e.g. 0.75), not {self.layer_decay}")
        if self.layer_decay is not None and self.mode == "scratch":
            raise ParameterError("layer_decay", "applies to fine-tuning a pretrained backbone (mode finetune)")
        for name in ("mixup", "cutmix"):
            if not getattr(self, name) >= 0.0:
                raise ParameterError(name, f"is a Beta alpha >= 0 (0: off; e.g. 0.2), not {getattr(self, name)}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ParameterError("ema", f"must be in (0, 1) (e.g. 0.998), not {self.ema}")
        if self.ema is not None and self.devices > 1:
            raise ParameterError("ema", "applies to one process (not with {devices} > 1)")

    @property
    def augment_preset(self) -> str:
        """The augmentation preset this run uses: ``augment``, else light (fine-tuning) / default (from scratch)."""
        return self.augment or ("default" if self.mode == "scratch" else "light")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in RECORDED_WHEN_SET:  # recorded only when set: other runs' config.json (and resumes) as before
            if d[key] == _DEFAULTS[key]:
                del d[key]
        return d


RECORDED_WHEN_SET = ("hierarchy", "layer_decay", "mixup", "cutmix", "ema")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


@dataclass
class TrainResult:
    """What ``imclass.train`` did: where the bundle is, validation metrics, per-epoch history, timings."""

    out: Path | None
    metrics: dict[str, Any]
    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0  # training images seen per epoch (probe: embedded)
    notes: list[str] = field(default_factory=list)  # decisions worth telling the user

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0
