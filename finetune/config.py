"""Training settings with the method's defaults (see ../shared/docs/method-reference.md)."""

from __future__ import annotations

import math
from dataclasses import asdict, fields

from dataengine.config import ConfigError, settings
from dataengine.registry import Registry

MODES = {"mpt": ("mpt",), "ft": ("ft",), "ft+mpt": ("ft", "mpt")}  # a mode is its phases, in order
PRECISIONS = ("auto", "fp32", "bf16")
BALANCES = ("none", "sqrt", "inverse")
PROTOCOLS = ("gt-masks", "two-stage", "two-stage-binary")
ENSEMBLE_FORMS = ("renormalized", "released")  # finetune.benchmark: how the ensemble normalizes
# Settings that may change between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = {"max_steps", "log_every", "checkpoint_every", "device", "progress"}
RESOLVED_WHEN_SAVED = {"prompt_depth", "data_ranks"}  # None: the trainer fills them in before it saves a run


class TrainConfigError(ConfigError):
    pass


PHASES = Registry("training phase", "--mode", {"ft": "finetune.train:FullFinetune",
                                               "mpt": "finetune.train:MaskPromptTuning"}, error=TrainConfigError)
LOSSES = Registry("loss", "--loss", {"clip": "finetune.train:in_batch_loss",
                                     "clip+vocab": "finetune.train:in_batch_and_vocabulary_loss",
                                     "vocab": "finetune.train:weighted_vocabulary_loss"}, error=TrainConfigError)


@settings
class TrainConfig:
    shards: str = ""                # brace pattern, glob, folder of tars, or the engine's OUT/shards
    out: str = ""
    clip: str = "ViT-B-16@openai"   # NAME[@PRETRAINED_OR_PATH]; the starting point of every mode
    mode: str = "mpt"               # mpt | ft | ft+mpt (full finetune, then MPT on top)
    epochs: int = 5                 # per phase
    batch_size: int = 256           # pairs per step (the method: 256 for ViT-L to 1024 for ViT-B)
    accumulate: int = 1             # micro-batches per optimizer step (in-batch negatives stay per micro-batch)
    mpt_lr: float = 2e-2
    mpt_weight_decay: float = 0.0
    ft_lr: float = 5e-6
    ft_weight_decay: float = 0.2
    warmup: float = 0.05            # share of each phase's steps with linear warmup, then cosine to zero
    grad_clip: float = 1.0          # max gradient norm (0 = off)
    prompt_depth: int | None = None  # None: the method's 3, or every block of a shallower tower; the
    #                                  trainer resolves it against the tower before saving or comparing it
    prompt_init_std: float = 0.02
    loss: str = "clip"              # clip (symmetric InfoNCE) | clip+vocab | vocab (all corpus nouns)
    vocab_loss_weight: float = 1.0
    mask_repeated_nouns: bool = True  # a noun repeated in a batch is not a negative of itself
    learn_logit_scale: bool = True  # in full finetune (always frozen in MPT); capped at 100 either way
    balance: str = "none"           # none | sqrt | inverse: repeat the pairs of rare nouns (repeat factor sampling)
    balance_threshold: float = 0.01  # a noun with a smaller share of the pairs than this is repeated
    shuffle_buffer: int = 2000
    workers: int = 2                # data loader processes (per data rank)
    data_ranks: int | None = None   # None: one per process; the trainer resolves it before saving or
    #                                 comparing it (a resumed run keeps its saved one)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"         # auto = bf16 autocast on GPU, fp32 on CPU
    checkpoint_every: int = 500     # optimizer steps; also at the end of every phase
    log_every: int = 10
    max_steps: int | None = None    # stop after this many optimizer steps in all (the schedule keeps its length)
    progress: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.mode not in MODES:
            raise TrainConfigError(f"--mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.loss not in LOSSES:
            raise TrainConfigError(f"--loss: expected one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.balance not in BALANCES:
            raise TrainConfigError(f"--balance: expected one of {', '.join(BALANCES)}, got {self.balance!r}")
        if not (isinstance(self.balance_threshold, int | float) and 0 < self.balance_threshold <= 1):
            raise TrainConfigError(f"--balance-threshold: a share of the pairs in (0, 1], got {self.balance_threshold}")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "accumulate", "prompt_depth", "data_ranks", "checkpoint_every", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        for name in ("mpt_lr", "ft_lr", "prompt_init_std"):
            _require(self, name, lambda value: value > 0, "a positive number")
        for name in ("mpt_weight_decay", "ft_weight_decay", "vocab_loss_weight", "grad_clip"):
            _require(self, name, lambda value: value >= 0, "a number, 0 or more")
        if not 0 <= self.warmup < 1:
            raise TrainConfigError(f"--warmup: a share of the steps in [0, 1), got {self.warmup}")
        if self.workers < 0 or self.shuffle_buffer < 0:
            raise TrainConfigError("--workers and --shuffle-buffer cannot be negative")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainConfigError(f"--max-steps: must be at least 1, got {self.max_steps}")

    @property
    def phases(self) -> tuple[str, ...]:
        return MODES[self.mode]

    def to_dict(self) -> dict:
        return asdict(self)

    def differences(self, saved: dict) -> list[str]:
        """Settings that differ from a saved run's, other than those a resumption may change."""
        return [f.name for f in fields(self)  # a setting added since the run was saved had its default then
                if f.name not in RESUMABLE_CHANGES and saved.get(f.name, f.default) != getattr(self, f.name)]


def _require(config: TrainConfig, name: str, test, expected: str) -> None:
    value = getattr(config, name)
    if not (isinstance(value, int | float) and math.isfinite(value) and test(value)):
        raise TrainConfigError(f"--{name.replace('_', '-')}: must be {expected}, got {value}")
