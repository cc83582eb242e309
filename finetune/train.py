"""Mask prompt tuning, full finetune of the visual tower, and full finetune then MPT.

The text tower is frozen in every mode: the vocabulary's prompt-ensembled text embeddings are
computed once per run (and kept in OUT/text_embeddings.pt). Output folder:

    OUT/checkpoints/last.pt   trainable state, optimizer, schedule, data position (resume)
    OUT/prompts.pt            the learned mask prompts alone (MPT phases)
    OUT/model.pt              the full open_clip state dict after a finetune phase
                              (loadable anywhere as --clip NAME@OUT/model.pt)
    OUT/log.jsonl             one line per logged step
    OUT/train.json            settings, corpus, per-phase summary
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dataengine.checkpoint import load_state_dict, load_tensors
from dataengine.clip import ClipModel, NounEmbeddings, load_clip, resolve_device
from dataengine.prompts import MaskPromptedViT, check_vit, masked_patches, prompt_depth, save_prompts

from .config import LOSSES, PHASES, TrainConfig, TrainConfigError
from .distributed import World, check_data_ranks, join
from .shards import IMAGE_EXTENSIONS, Corpus, PairStream, ShardError, batches_in_epoch, loader

log = logging.getLogger(__name__)
MAX_LOGIT_SCALE = math.log(100)
CHECKPOINT_FORMAT = "dataengine-finetune-checkpoint/1"
CHECKPOINT_KEYS = {"phase", "epoch", "step", "consumed", "global_step", "trainable", "optimizer", "schedule"}
# Every file a run writes into OUT (each also as NAME.tmp while it is being replaced), in OUTPUT_FOLDERS.
OUTPUT_FILES = ("checkpoints/last.pt", "prompts.pt", "model.pt", "log.jsonl", "train.json", "text_embeddings.pt")
OUTPUT_FOLDERS = ("checkpoints",)


# ---------------------------------------------------------------- loss


def logit_scale(model) -> torch.Tensor:
    return model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def clip_loss(regions: torch.Tensor, texts: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor,
              mask_repeated: bool = True) -> torch.Tensor:
    """Symmetric in-batch InfoNCE. With `mask_repeated`, a pair whose noun repeats elsewhere in the
    batch does not count the other occurrences as negatives (they are the same class)."""
    logits = scale * regions @ texts.t()
    if mask_repeated:
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(len(regions), device=regions.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def vocabulary_loss(regions: torch.Tensor, vocabulary: torch.Tensor, labels: torch.Tensor,
                    scale: torch.Tensor) -> torch.Tensor:
    """Classification of each region over every noun of the corpus."""
    return F.cross_entropy(scale * regions @ vocabulary.t(), labels)


# The losses `--loss` names (finetune.config.LOSSES): (regions, labels, vocabulary text, scale, config).


def in_batch_loss(regions, labels, vocabulary, scale, config: TrainConfig) -> torch.Tensor:
    return clip_loss(regions, vocabulary[labels], labels, scale, config.mask_repeated_nouns)


def weighted_vocabulary_loss(regions, labels, vocabulary, scale, config: TrainConfig) -> torch.Tensor:
    return config.vocab_loss_weight * vocabulary_loss(regions, vocabulary, labels, scale)


def in_batch_and_vocabulary_loss(regions, labels, vocabulary, scale, config: TrainConfig) -> torch.Tensor:
    return (in_batch_loss(regions, labels, vocabulary, scale, config)
            + weighted_vocabulary_loss(regions, labels, vocabulary, scale, config))


# ---------------------------------------------------------------- the model per phase


class Phase:
    """What one kind of training phase trains and keeps; the trainer's loop is the same for all.
    Subclasses are registered in `finetune.config.PHASES` under the names `--mode` combines."""

    name = "phase"
    skips_parameters = False  # whether a forward may leave some trainable parameter out

    def __init__(self, clip: ClipModel, tower: torch.nn.Module, parameters: list, lr: float, weight_decay: float,
                 exempt: set | None = None):
        self.clip, self.tower, self.parameters = clip, tower, parameters
        self.lr, self.weight_decay, self.exempt = lr, weight_decay, exempt or set()

    @classmethod
    def check(cls, clip: ClipModel, config: TrainConfig) -> None:
        """Refuse a model this phase cannot train, before anything runs."""

    @classmethod
    def restore_finished(cls, clip: ClipModel, out: Path, device: str) -> None:
        """On resume: bring back what this phase, finished in an earlier run, left in OUT."""

    def parameter_groups(self) -> list[dict]:
        return parameter_groups(self.parameters, self.weight_decay, self.exempt)

    def encode(self, images, masks):
        return self.tower(images)

    def module(self) -> torch.nn.Module:
        return StepModule(self)

    def unmasked_pairs(self, masks) -> int:
        """Pairs of the batch that give this phase nothing to learn from."""
        return 0

    def after_step(self) -> None:
        pass

    def trainable_state(self) -> dict:
        raise NotImplementedError

    def load_trainable(self, state: dict) -> None:
        raise NotImplementedError

    def on_checkpoint(self, out: Path, clip_spec: str) -> None:
        pass

    def save_results(self, out: Path, clip_spec: str) -> None:
        raise NotImplementedError

    def summarise(self, summary: dict, meter: Meter) -> dict:
        return summary

    def close(self) -> None:
        pass


class FullFinetune(Phase):
    """`ft`: every weight of the visual tower (and the logit scale, with --learn-logit-scale)."""

    name = "ft"

    @classmethod
    def build(cls, clip: ClipModel, config: TrainConfig) -> FullFinetune:
        model = clip.model
        model.requires_grad_(False)
        model.visual.requires_grad_(True)
        model.visual.train()
        model.logit_scale.requires_grad_(config.learn_logit_scale)
        params = [p for p in model.parameters() if p.requires_grad]
        return cls(clip, model.visual, params, config.ft_lr, config.ft_weight_decay, no_decay(model))

    @classmethod
    def restore_finished(cls, clip: ClipModel, out: Path, device: str) -> None:
        clip.model.load_state_dict(load_state_dict(out / "model.pt", "--resume", device))

    def after_step(self) -> None:
        with torch.no_grad():
            self.clip.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def trainable_state(self) -> dict:
        return {name: tensor.detach().cpu() for name, tensor in self.clip.model.state_dict().items()
                if name.startswith("visual.") or name == "logit_scale"}

    def load_trainable(self, state: dict) -> None:
        self.clip.model.load_state_dict(state, strict=False)

    def save_results(self, out: Path, clip_spec: str) -> None:
        _atomic_save(self.clip.model.state_dict(), out / "model.pt")


class MaskPromptTuning(Phase):
    """`mpt`: learned prompts for masked-out patches on the frozen tower (OUT/prompts.pt)."""

    name = "mpt"
    skips_parameters = True  # the prompts, in a batch whose regions mask no patch out

    @classmethod
    def check(cls, clip: ClipModel, config: TrainConfig) -> None:
        check_vit(clip.model.visual, config.prompt_depth)

    @classmethod
    def build(cls, clip: ClipModel, config: TrainConfig) -> MaskPromptTuning:
        model = clip.model
        model.requires_grad_(False)
        model.eval()
        generator = torch.Generator().manual_seed(config.seed)
        prompts = MaskPromptedViT(model.visual, prompt_depth(model.visual, config.prompt_depth),
                                  config.prompt_init_std, generator).to(clip.device)
        return cls(clip, prompts, [prompts.prompts], config.mpt_lr, config.mpt_weight_decay)

    def encode(self, images, masks):
        return self.tower(images, masks)

    def unmasked_pairs(self, masks) -> int:
        return int((~masked_patches(masks, self.tower.grid).any(1)).sum())

    def trainable_state(self) -> dict:
        return {"prompts": self.tower.prompts.detach().cpu()}

    def load_trainable(self, state: dict) -> None:
        with torch.no_grad():
            self.tower.prompts.copy_(state["prompts"])

    def on_checkpoint(self, out: Path, clip_spec: str) -> None:
        self.save_results(out, clip_spec)

    def save_results(self, out: Path, clip_spec: str) -> None:
        save_prompts(out / "prompts.pt.tmp", self.tower, clip_spec)
        os.replace(out / "prompts.pt.tmp", out / "prompts.pt")

    def summarise(self, summary: dict, meter: Meter) -> dict:
        if meter.pairs and meter.whole_frame == meter.pairs:
            log.warning("mask prompt tuning: none of the %d pairs has a patch outside its region (no mask.png and "
                        "no CLIP-mean background: the region is the whole image), so the prompts learned nothing; "
                        "train on pairs with masks, or use --mode ft", meter.pairs)
        return {**summary, "pairs_without_masked_patch": meter.whole_frame}

    def close(self) -> None:
        """Takes MPT's hooks off the shared tower, so that what runs on it next sees the plain tower."""
        self.tower.remove_hooks()


class StepModule(torch.nn.Module):
    """A phase's forward: region features and the logit scale. One module, so that DDP sees every
    trainable parameter of a step (the tower's or the prompts, and the logit scale)."""

    def __init__(self, phase: Phase):
        super().__init__()
        self.tower, self.model, self.encode = phase.tower, phase.clip.model, phase.encode
        self.skippable = list(phase.parameters) if phase.skips_parameters else []

    def forward(self, images, masks):
        features = self.encode(images, masks)
        if self.skippable:
            # a zero use of every trainable parameter, so that each gets a (zero) gradient even from a
            # batch that leaves it out: DDP reduces gradients only on ranks where some parameter got one,
            # and a rank that reduces nothing leaves the others waiting for ever
            features = features + 0.0 * sum(parameter.sum() for parameter in self.skippable)
        return features, logit_scale(self.model)


def parameter_groups(parameters, weight_decay: float, exempt: set) -> list[dict]:
    """AdamW groups: `weight_decay` for every parameter but those whose id is in `exempt`."""
    parameters = list(parameters)
    decayed = [p for p in parameters if id(p) not in exempt]
    kept = [p for p in parameters if id(p) in exempt]
    return [group for group in ({"params": decayed, "weight_decay": weight_decay},
                                {"params": kept, "weight_decay": 0.0}) if group["params"]]


def no_decay(model) -> set:
    """As open_clip's trainer: gains, biases, norms and the logit scale take no weight decay."""
    return {id(p) for n, p in model.named_parameters()
            if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n}


def warmup_cosine(total: int, warmup: float):
    warmup_steps = int(total * warmup)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---------------------------------------------------------------- the trainer


class Trainer:
    """One process's part of a training run: the whole run, or one rank of a data-parallel one
    (finetune.distributed). `reporter(metrics, folder)`, when given, is called on every rank after
    each checkpoint, with the checkpoint folder on rank 0 and None on the others (Ray Train's report)."""

    def __init__(self, config: TrainConfig, resume: bool = False, reporter=None):
        self.config, self.reporter = config, reporter
        self.out = Path(config.out)
        check_out(self.out)
        self.device = resolve_device(config.device)
        self.world: World = join(self.device)
        self._check_resume(resume)
        self.config = config = replace(config, data_ranks=self._data_ranks(resume))
        check_data_ranks(config.batch_size, config.data_ranks, self.world.size, "processes")
        self.device = self.world.device(self.device)
        if self.device.startswith("cuda"):
            torch.cuda.set_device(torch.device(self.device))  # pinned memory and autocast follow it
        self.corpus = Corpus.scan(config.shards, config.balance, config.balance_threshold)
        if len(self.corpus.shards) < config.data_ranks:
            raise ShardError(f"--shards: {len(self.corpus.shards)} shard(s) for {config.data_ranks} data ranks: each "
                             "data rank reads shards of its own, so it needs at least one (write more, smaller "
                             "shards, or use fewer --data-ranks)")
        self.clip = load_clip(config.clip, self.device, seed=config.seed)
        # the default depth is resolved against the tower before the settings are saved or compared,
        # so that train.json says the depth used and a run with the default resumes whatever was saved
        self.default_depth = prompt_depth(self.clip.model.visual, None)
        self.config = config = replace(config, prompt_depth=prompt_depth(self.clip.model.visual, config.prompt_depth))
        for name in config.phases:
            PHASES.get(name).check(self.clip, config)
        self.state = self._load_or_start(resume)
        self.text = self.world.broadcast(self._text_embeddings().contiguous())
        self.loss = LOSSES.get(config.loss)

    # ---- run state

    def _check_resume(self, resume: bool) -> None:
        """What can be refused before the model loads."""
        checkpoint = self.out / "checkpoints" / "last.pt"
        if not resume and checkpoint.exists():
            raise TrainConfigError(f"--out: {self.out} already holds a training run; pass --resume to "
                                   "continue it, or choose another folder")
        if resume and not checkpoint.exists():
            raise TrainConfigError(f"--resume: no checkpoint at {checkpoint}")

    def _data_ranks(self, resume: bool) -> int:
        """--data-ranks, or by default: the saved run's on --resume, else one per process."""
        if self.config.data_ranks is not None:
            return self.config.data_ranks
        if not resume:
            return self.world.size
        saved = load_tensors(self.out / "checkpoints" / "last.pt", "--resume", mmap=True)
        saved_config = saved.get("config") if isinstance(saved, dict) else None
        return _saved_data_ranks(saved_config) if isinstance(saved_config, dict) else self.world.size

    def _load_or_start(self, resume: bool) -> dict:
        checkpoint = self.out / "checkpoints" / "last.pt"
        if not resume:
            return {"phase": 0, "epoch": 0, "step": 0, "global_step": 0, **fresh_position()}
        saved = load_tensors(checkpoint, "--resume")
        if (not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT
                or not isinstance(saved.get("config"), dict) or not CHECKPOINT_KEYS <= set(saved)):
            raise TrainConfigError(f"--resume: {checkpoint} is not a dataengine finetune checkpoint")
        saved_config = dict(saved["config"])
        if saved_config.get("prompt_depth") is None:  # saved unresolved (the default, before it was resolved)
            saved_config["prompt_depth"] = self.default_depth
        saved_config["data_ranks"] = _saved_data_ranks(saved_config)
        changed = self.config.differences(saved_config)
        if changed:
            raise TrainConfigError(f"--resume: settings differ from the saved run's: {', '.join(changed)}")
        if self.world.main:
            self._truncate_log(saved["global_step"])
        if not isinstance(saved.get("next_worker", 0), dict):  # saved before data ranks: one data rank's position
            saved.update(consumed={0: saved["consumed"]} if saved["consumed"] else {},
                         next_worker={0: saved.get("next_worker", 0)})
        return saved

    def _truncate_log(self, step: int) -> None:
        """Steps logged after the checkpoint will be run again: their lines go."""
        path = self.out / "log.jsonl"
        if path.exists():
            lines = [line for line in path.read_text().splitlines() if _logged_step(line) <= step]
            path.write_text("".join(line + "\n" for line in lines))

    def _text_embeddings(self) -> torch.Tensor:
        cache = self.out / "text_embeddings.pt"
        key = {"clip": self.config.clip, "vocabulary": self.corpus.vocabulary}
        if cache.exists() or cache.is_symlink():
            saved = load_tensors(cache, "--out")  # a file in the output folder is untrusted
            if isinstance(saved, dict) and saved.get("key") == key and isinstance(saved.get("embeddings"), torch.Tensor):
                return saved["embeddings"].to(self.device)
        log.info("encoding %d nouns x %d templates", len(self.corpus.vocabulary), 14)
        embeddings = NounEmbeddings(self.clip)(self.corpus.vocabulary).clone()  # a normal tensor, not an inference one
        if self.world.main:
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_save({"key": key, "embeddings": embeddings}, cache)
        return embeddings.to(self.device)

    # ---- schedule

    def steps_in_phase(self) -> list[int]:
        config = self.config
        return [math.ceil(batches_in_epoch(self.corpus.epoch_counts(config.seed, epoch), config.seed, epoch, config.workers,
                                           config.batch_size // config.data_ranks, config.data_ranks)
                          / config.accumulate) for epoch in range(config.epochs)]

    def _feeds(self, epoch: int, position: Position) -> list:
        """The batch iterators of this process's data ranks, from `position` on."""
        pin_memory = self.device.startswith("cuda")
        streams = [self._stream(epoch, rank, position.consumed.get(rank, {}), position.next_worker.get(rank, 0))
                   for rank in self.world.hosted(self.config.data_ranks)]
        return [iter(loader(stream, self.config.workers, pin_memory)) for stream in streams]

    def _stream(self, epoch: int, rank: int, skip: dict, first_worker: int) -> PairStream:
        clip, config = self.clip, self.config
        return PairStream(self.corpus.shards, self.corpus.vocabulary, clip.image_size, clip.mean, clip.std,
                          config.batch_size // config.data_ranks, config.seed, epoch, config.shuffle_buffer, skip,
                          first_worker, self.corpus.repeat, rank, config.data_ranks,
                          self.corpus.epoch_counts(config.seed, epoch))

    # ---- training

    def run(self) -> dict:
        try:
            summary = self._run()
            self.world.barrier()  # no rank ends before rank 0 has written the results
            return summary
        finally:
            self.world.leave()

    def _run(self) -> dict:
        if self.world.main:
            self.out.mkdir(parents=True, exist_ok=True)
        summary = self._summary()
        for index, name in enumerate(self.config.phases):
            if index < self.state["phase"]:
                PHASES.get(name).restore_finished(self.clip, self.out, self.device)
                continue
            result = self._run_phase(index, name)
            summary["phases"].append(result)
            self._write_summary(summary)
            if result["stopped"]:
                break
        summary["finished"] = self.state["phase"] >= len(self.config.phases)
        self._write_summary(summary)
        return summary

    def _summary(self) -> dict:
        """train.json, written before the first step (so that a run is recognisable however it ends)
        and after every phase; a resumed run appends to the phases already recorded."""
        path = self.out / "train.json"
        previous = json.loads(path.read_text()).get("phases", []) if path.exists() else []
        summary = {"config": self.config.to_dict(), "architecture": self.clip.architecture,
                   "corpus": {"shards": len(self.corpus.shards), "pairs": self.corpus.size,
                              "nouns": len(self.corpus.vocabulary)},
                   "phases": previous, "finished": False}
        self._write_summary(summary)
        return summary

    def _write_summary(self, summary: dict) -> None:
        if not self.world.main:
            return
        tmp = self.out / "train.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, self.out / "train.json")

    def _run_phase(self, index: int, name: str) -> dict:
        phase = PHASES.get(name).build(self.clip, self.config)
        try:
            return self._train_phase(index, phase)
        finally:
            phase.close()

    def _train_phase(self, index: int, phase: Phase) -> dict:
        config, name = self.config, phase.name
        optimizer = torch.optim.AdamW(phase.parameter_groups(), lr=phase.lr)
        steps_per_epoch = self.steps_in_phase()
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(sum(steps_per_epoch), config.warmup))
        resuming = self.state["phase"] == index and self.state.get("trainable") is not None
        if resuming:
            self._restore(phase, optimizer, schedule)
        else:
            self.state.update({"phase": index, "epoch": 0, "step": 0, **fresh_position()})
        self.forward = self.world.wrap(phase.module(), self.device)
        bar = tqdm(total=sum(steps_per_epoch), initial=self.state["step"], desc=f"{name}", unit="step",
                   disable=not (config.progress and self.world.main), dynamic_ncols=True)
        self.meter = Meter()
        while self.state["epoch"] < config.epochs:
            for loss in self._epoch(phase, optimizer, schedule):
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", pairs_s=f"{self.meter.rate:.1f}", epoch=self.state["epoch"],
                                skipped=self.meter.skipped)
                if self._should_stop():
                    self._checkpoint(phase, optimizer, schedule)
                    bar.close()
                    return self._phase_summary(phase, loss, stopped=True)
            self.state.update({"epoch": self.state["epoch"] + 1, **fresh_position()})
        bar.close()
        self.state.update({"phase": index + 1, "epoch": 0, "step": 0, **fresh_position()})
        if self.world.main:
            phase.save_results(self.out, self.config.clip)
        self._checkpoint(phase, optimizer, schedule, finished=True)
        return self._phase_summary(phase, self.meter.last_loss, stopped=False)

    def _should_stop(self) -> bool:
        return self.config.max_steps is not None and self.state["global_step"] >= self.config.max_steps

    def _epoch(self, phase: Phase, optimizer, schedule):
        """Yields the loss of each optimizer step; checkpoints every `checkpoint_every` steps. Each step
        takes the next local batch of every data rank; a rank whose shards have run out takes part
        with none until every rank's have (nothing is dropped), so every process runs the same steps."""
        config = self.config
        position = Position.of(self.state, config.workers)
        fresh, decoded = not position.consumed, 0
        feeds = self._feeds(self.state["epoch"], position)
        pending, losses, count = 0, [], 0
        while True:
            batches = [batch for batch in (next(feed, None) for feed in feeds) if batch is not None]
            processes = self._exchange(batches, len(feeds), phase)
            parts = [part for process in processes for part in process]  # every data rank's, in rank order
            if not any(part.alive for part in parts):
                break
            for rank, part in enumerate(parts):
                if part.alive:
                    position.advance(rank, part.worker, part.samples)
            counts = [sum(part.pairs for part in process) for process in processes]
            pairs = sum(counts)
            self.meter.skipped += sum(part.samples for part in parts) - pairs
            if not pairs:  # every pair of the global batch was undecodable (each logged)
                continue
            decoded += pairs
            self.meter.whole_frame += sum(part.unmasked for part in parts)
            loss = self._loss(self._join(batches), counts) / config.accumulate
            if loss.requires_grad:  # MPT: a batch in which no patch is masked out gives the prompts nothing
                loss.backward()
            pending, count = pending + 1, count + pairs
            losses.append(loss.item() * config.accumulate)
            if pending == config.accumulate:
                self.meter.pairs += count
                yield self._step(phase, optimizer, schedule, position, losses)
                pending, losses, count = 0, [], 0
        if pending:
            _rescale_gradients(phase.parameters, config.accumulate / pending)  # a short last group
            self.meter.pairs += count
            yield self._step(phase, optimizer, schedule, position, losses)
        if fresh and not decoded:
            raise ShardError(f"epoch {self.state['epoch']} gave no pairs: the shards hold no image "
                             f"({'/'.join(IMAGE_EXTENSIONS)}) + txt samples")

    def _exchange(self, batches: list[dict], hosted: int, phase: Phase) -> list[list[Part]]:
        """Per process, the part of this step of each data rank it reads (the same on every rank);
        `batches`: the local batches of this process's data ranks that still have one."""
        mine = [Part.of(batch, phase) for batch in batches] + [Part()] * (hosted - len(batches))
        table = self.world.counts(*(number for part in mine for number in part))
        return [[Part(*row[i:i + len(Part._fields)]) for i in range(0, len(row), len(Part._fields))] for row in table]

    def _join(self, batches: list[dict]) -> dict:
        """This process's share of a global batch: its data ranks' local batches, in rank order. An
        empty share is one blank image with no label: open_clip's towers cannot take an empty batch,
        and every process must run the forward and backward (DDP's collectives); `_loss` drops it. Its
        mask is empty (MPT prompts every patch of it); its gradient is zero."""
        if not sum(len(batch["labels"]) for batch in batches):
            size = self.clip.image_size
            return {"images": torch.zeros(1, 3, size, size), "masks": torch.zeros(1, size, size, dtype=torch.bool),
                    "labels": torch.zeros(0, dtype=torch.long)}
        return {name: torch.cat([batch[name] for batch in batches]) for name in ("images", "masks", "labels")}

    def _step(self, phase: Phase, optimizer, schedule, position: Position, losses: list) -> float:
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(phase.parameters, self.config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        phase.after_step()
        position.save(self.state)
        self.state["step"] += 1
        self.state["global_step"] += 1
        loss = self.meter.last_loss = sum(losses) / len(losses)
        if self.state["global_step"] % self.config.log_every == 0 and self.world.main:
            self._log(phase.name, loss, schedule.get_last_lr()[0])
        if self.state["global_step"] % self.config.checkpoint_every == 0:
            self._checkpoint(phase, optimizer, schedule)
        return loss

    def _loss(self, batch: dict, counts: list[int]) -> torch.Tensor:
        """The loss of the global batch (this rank's pairs and, gathered, every other rank's)."""
        images = batch["images"].to(self.device, non_blocking=True)
        masks = batch["masks"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device)
        with self._autocast():
            features, scale = self.forward(images, masks)
        features = features[:len(labels)]  # without the blank image of an empty share (`_join`)
        regions, labels = self.world.gather(F.normalize(features.float(), dim=-1), labels, counts)
        return self.loss(regions, labels, self.text, scale, self.config)

    def _autocast(self):
        use_bf16 = self.config.precision == "bf16" or (self.config.precision == "auto" and self.device.startswith("cuda"))
        if not use_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16)

    # ---- persistence

    def _restore(self, phase: Phase, optimizer, schedule) -> None:
        state = self.state
        phase.load_trainable(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])

    def _checkpoint(self, phase: Phase, optimizer, schedule, finished: bool = False) -> None:
        """A finished phase keeps nothing to resume: its results are in model.pt / prompts.pt."""
        self.state.update({
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
            "trainable": None if finished else phase.trainable_state(),
            "optimizer": None if finished else optimizer.state_dict(),
            "schedule": None if finished else schedule.state_dict(),
        })
        path = self.out / "checkpoints" / "last.pt"
        if self.world.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save(self.state, path)
            phase.on_checkpoint(self.out, self.config.clip)
        if self.reporter is not None:
            self.reporter({"phase": phase.name, "step": self.state["global_step"], "loss": self.meter.last_loss},
                          path.parent if self.world.main else None)

    def _log(self, phase: str, loss: float, lr: float) -> None:
        record = {"phase": phase, "epoch": self.state["epoch"], "step": self.state["global_step"],
                  "loss": round(loss, 6), "lr": lr, "pairs": self.meter.pairs, "skipped": self.meter.skipped,
                  "seconds": round(self.meter.seconds, 3)}
        with open(self.out / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _phase_summary(self, phase: Phase, loss: float, stopped: bool) -> dict:
        meter = self.meter
        summary = {"phase": phase.name, "steps": self.state["global_step"], "pairs": meter.pairs,
                   "skipped_pairs": meter.skipped, "seconds": round(meter.seconds, 3),
                   "pairs_per_s": round(meter.rate, 2), "last_loss": loss, "stopped": stopped}
        return phase.summarise(summary, meter)


def fresh_position() -> dict:
    """The data position of an epoch not started (Position's state)."""
    return {"consumed": {}, "next_worker": {}}


class Part(NamedTuple):
    """One data rank's local batch of a step, in numbers every process exchanges."""

    alive: int = 0  # whether the rank's shards still gave a batch
    worker: int = 0  # the logical loader worker that made it
    samples: int = 0  # raw samples it used up
    pairs: int = 0  # pairs decoded
    unmasked: int = 0  # MPT: pairs with no patch masked out

    @classmethod
    def of(cls, batch: dict, phase: Phase) -> Part:
        return cls(1, batch["worker"], batch["samples"], len(batch["nouns"]), phase.unmasked_pairs(batch["masks"]))


@dataclass
class Position:
    """How far an epoch has gone: per data rank, the raw samples each of its logical loader workers
    gave, and the worker whose batch comes next (every process keeps every data rank's: rank 0
    saves them all)."""

    consumed: dict[int, dict[int, int]]
    next_worker: dict[int, int]
    workers: int

    @classmethod
    def of(cls, state: dict, workers: int) -> Position:
        consumed = {int(rank): {int(w): n for w, n in done.items()} for rank, done in state["consumed"].items()}
        return cls(consumed, {int(rank): w for rank, w in state["next_worker"].items()}, max(1, workers))

    def advance(self, rank: int, worker: int, samples: int) -> None:
        done = self.consumed.setdefault(rank, {})
        done[worker] = done.get(worker, 0) + samples
        self.next_worker[rank] = (worker + 1) % self.workers

    def save(self, state: dict) -> None:
        state["consumed"] = {rank: dict(done) for rank, done in self.consumed.items()}
        state["next_worker"] = dict(self.next_worker)


@dataclass
class Meter:
    """Pairs and wall time of the current phase in this process."""

    started: float = field(default_factory=time.perf_counter)
    pairs: int = 0
    skipped: int = 0  # pairs that could not be read or decoded (each logged)
    whole_frame: int = 0  # MPT: pairs whose mask leaves no patch out, which give the prompts nothing
    last_loss: float = float("nan")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.pairs / max(self.seconds, 1e-9)


def _rescale_gradients(parameters, factor: float) -> None:
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad.mul_(factor)


def _saved_data_ranks(saved_config: dict) -> int:
    """A run saved before --data-ranks walked one order: one data rank's."""
    return saved_config.get("data_ranks") or 1


def _logged_step(line: str) -> float:
    """The step of a log line; a line cut short by a crash counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def check_run_folder(folder: Path) -> None:
    """Refuse a folder holding anything a training run does not write, before a caller replaces it."""
    from dataengine.photo_demo import check_own_folder

    names = set(OUTPUT_FILES) | {f"{name}.tmp" for name in OUTPUT_FILES}
    check_own_folder(folder, lambda name, path: name in names, set(OUTPUT_FOLDERS), "a training run")


def check_out(out: Path) -> None:
    """--out is a folder, or nothing yet (it is made once the models have loaded)."""
    if out.exists() and not out.is_dir():
        raise TrainConfigError(f"--out: {out} exists and is not a folder")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise TrainConfigError(f"--out: {parent} is not a folder")


def train(config: TrainConfig, resume: bool = False, reporter=None) -> dict:
    return Trainer(config, resume, reporter).run()
