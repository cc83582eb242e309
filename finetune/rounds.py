"""The model-in-the-loop engine, `dataengine loop`: rounds of mining and training, as SAM's data
engine put its model in the loop.

Round 1 mines the inputs with the pretrained CLIP (`--clip`) and trains on the pairs (`--mode`,
from the pretrained CLIP). Round r > 1 mines the same inputs again with round r-1's adapted model
(its weights and mask prompts score the regions) and trains again from the pretrained CLIP on the
new pairs, so that rounds differ only in their pairs. Optionally each round's corpus goes through
the corpus-level post-pass (`dataengine filter`) before training.

    OUT/round-1/corpus/     the mined corpus (dataengine mine's layout)
    OUT/round-1/filtered/   with --noun-quantile or --max-pairs-per-noun: the filtered corpus
    OUT/round-1/train/      the training run (dataengine finetune's layout)
    OUT/loop.json           per round: the model that mined, its pairs and rejects, training results,
                            and what `evaluate` adds (the controlled world: pair precision, accuracy)

Resumable at every step: a rerun of the same command resumes mining and filtering (their own
exactly-once rules), resumes training from its last checkpoint, and skips what is finished. A round
is recorded in loop.json once its training has finished.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from dataengine.config import ConfigError, FilterConfig, MineConfig

from .config import RESOLVED_WHEN_SAVED, TrainConfig

log = logging.getLogger(__name__)
LOOP_FILE = "loop.json"


@dataclass
class Round:
    number: int
    folder: Path
    mined_with: str  # the --clip spec that scored this round's regions

    @property
    def corpus(self) -> Path:
        return self.folder / "corpus"

    @property
    def filtered(self) -> Path:
        return self.folder / "filtered"

    @property
    def run(self) -> Path:
        return self.folder / "train"


@dataclass
class LoopSettings:
    out: str
    rounds: int = 2
    noun_quantile: float | None = None  # the post-pass of each round's corpus (all None: no post-pass)
    max_pairs_per_noun: int | None = None
    min_noun_margin: float | None = None

    def validate(self) -> None:
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"--rounds: must be at least 1, got {self.rounds!r}")

    @property
    def filters(self) -> bool:
        return any(value is not None for value in (self.noun_quantile, self.max_pairs_per_noun, self.min_noun_margin))


Evaluate = Callable[[Round, Path], dict]  # (round, the corpus it trained on) -> figures for loop.json


def run_rounds(settings: LoopSettings, mining: MineConfig, training: TrainConfig,
               evaluate: Evaluate | None = None) -> dict:
    """Run (or resume) the loop; returns loop.json's content."""
    from dataengine.clip import finetune_run

    settings.validate()
    mining.validate()
    if finetune_run(mining.match.clip) is not None:
        raise ConfigError(f"--clip: {mining.match.clip} is a finetune output folder; the loop starts from a pretrained "
                          "CLIP (NAME[@WEIGHTS]), which every round trains from")
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    pretrained = mining.match.clip
    record = {"pretrained": pretrained, "mode": training.mode, "rounds": []}
    previous: Round | None = None
    for number in range(1, settings.rounds + 1):
        current = Round(number, out / f"round-{number}", str(previous.run) if previous else pretrained)
        record["rounds"].append(run_round(current, settings, mining, training, pretrained, evaluate))
        _write_json(out / LOOP_FILE, record)
        previous = current
    return record


def run_round(current: Round, settings: LoopSettings, mining: MineConfig, training: TrainConfig, pretrained: str,
              evaluate: Evaluate | None) -> dict:
    try:
        return _run_round(current, settings, mining, training, pretrained, evaluate)
    except ConfigError as error:
        raise ConfigError(f"round {current.number}: {error}. A loop resumes only with the settings it began with "
                          f"(a round trained again changes what the next one mines with): remove {current.folder} "
                          "and the rounds after it, or choose another --out") from None


def _run_round(current: Round, settings: LoopSettings, mining: MineConfig, training: TrainConfig, pretrained: str,
               evaluate: Evaluate | None) -> dict:
    from dataengine.pipeline import mine
    from dataengine.postpass import filter_corpus

    log.info("round %d: mining with %s", current.number, current.mined_with)
    config = copy.deepcopy(mining)
    config.out, config.match.clip = str(current.corpus), current.mined_with
    manifest = mine(config)
    corpus = current.corpus
    if settings.filters:
        manifest = filter_corpus(FilterConfig(corpus=str(corpus), out=str(current.filtered),
                                              noun_quantile=settings.noun_quantile,
                                              min_noun_margin=settings.min_noun_margin,
                                              max_pairs_per_noun=settings.max_pairs_per_noun, progress=mining.progress))
        corpus = current.filtered
    summary = train_or_resume(replace(training, shards=str(corpus / "shards"), out=str(current.run), clip=pretrained))
    entry = {"round": current.number, "mined_with": current.mined_with, "corpus": str(corpus),
             "pairs": manifest["counts"]["pairs"], "images_with_pairs": manifest["counts"]["images_with_pairs"],
             "reject_reasons": manifest["counts"]["reject_reasons"], "train": str(current.run),
             "training": [{key: phase.get(key) for key in ("phase", "steps", "last_loss")}
                          for phase in summary["phases"]]}
    if evaluate is not None:
        entry.update(evaluate(current, corpus))
    return entry


def train_or_resume(config: TrainConfig) -> dict:
    """A finished run is read back; one with a checkpoint resumes; one cut short before its first
    checkpoint starts again (only the files a training run writes are removed)."""
    from .train import check_run_folder, train

    out = Path(config.out)
    summary_file = out / "train.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        if summary.get("finished"):
            changed = [name for name in config.differences(summary.get("config", {}))
                       if not (name in RESOLVED_WHEN_SAVED and getattr(config, name) is None)]
            if changed:
                raise ConfigError(f"{out} is a finished training run with other settings ({', '.join(changed)})")
            return summary
    if (out / "checkpoints" / "last.pt").exists():
        return train(config, resume=True)
    if out.exists():
        check_run_folder(out)
        shutil.rmtree(out)
    return train(config)


def _write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)
