"""Streaming (masked region, noun) pairs from WebDataset shards, with a resumable epoch position.

Any shard set with `KEY.jpg` (or another of dataengine's image extensions) + `KEY.txt` works;
`KEY.mask.png` gives the region mask. A shard with no mask.png at all (plain captioned photos, or
the method's released pairs) has its masks read off the crops themselves (pixels at the CLIP mean
are outside the region). Members are grouped into samples by webdataset's own key rule. A pair that
lost a member to a damaged tar (its image, its txt, or its mask.png in a shard whose other pairs
have one) is skipped and counted, never trained on with a guessed noun or mask.

Order is a function of (seed, epoch, data ranks, loader workers) only. Per epoch the shards are
shuffled and dealt to the data ranks (each shard, in the shuffled order, to the rank with the fewest
pairs so far: round-robin when the shards are equal), and each rank's shards round-robin to its
loader workers; each worker shuffles its samples through a seeded buffer and batches them. So a
data rank reads its own shards only (webdataset's split by node, then by worker, made
deterministic). Every batch says which worker made it, so the trainer can record how many samples
of each rank's workers it has consumed and a resumed run skips exactly those (before decoding
them). With one data rank this is the order of a single process.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import math
import random
import re
import sys
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from webdataset.tariterators import base_plus_ext

from dataengine.config import ConfigError
from dataengine.sources.webdataset import IMAGE_EXTENSIONS

FILL_TOLERANCE = 16  # JPEG noise on the mean-coloured background of mask-less crops
MASK = "mask.png"
PAIR_MEMBERS = (*IMAGE_EXTENSIONS, "txt", MASK)  # a sample with any of these is a pair (whole or damaged)
META_MEMBER = re.compile(r"(^|/)__[^/]*__($|/)")  # webdataset's skip_meta: never a sample member
MAX_PIXELS = 4096 * 4096  # per pair image: a crop is resized to the model's input size anyway
log = logging.getLogger(__name__)


class ShardError(ConfigError):
    """Shards that cannot be read as pairs."""


def expand_shards(pattern: str | list[str]) -> list[str]:
    """A brace pattern, glob, folder or list -> sorted existing tar paths."""
    from dataengine.sources.webdataset import expand_tars

    return expand_tars(pattern, "--shards", ShardError)


def _index_for(shard: str) -> Path:
    """The engine writes OUT/shards/pairs-N.tar next to OUT/index/pairs-N.parquet."""
    path = Path(shard)
    return path.parent.parent / "index" / (path.stem + ".parquet")


def is_pair(sample: dict) -> bool:
    """A sample that is a pair, whole or with members lost (then PairStream skips and counts it)."""
    return any(ext in sample for ext in PAIR_MEMBERS)


def shard_pairs(shard: str) -> list[tuple[str, str | None]]:
    """(key, noun) of every pair of a shard, from the engine's parquet index when there is one, else
    from the tar (a pair whose txt was lost counts, with the noun None)."""
    index = _index_for(shard)
    if index.exists():
        import pyarrow.parquet as pq

        table = pq.read_table(index, columns=["key", "noun"])
        return [(key, sys.intern(noun.strip())) for key, noun in
                zip(table.column("key").to_pylist(), table.column("noun").to_pylist(), strict=True)]
    pairs = [sample for sample in read_shard(shard, {"txt"}) if is_pair(sample)]
    return [(s["__key__"], _noun(s)) for s in pairs]


def _noun(sample: dict) -> str | None:
    return sys.intern(sample["txt"].decode("utf-8", errors="replace").strip()) if "txt" in sample else None


def shard_nouns(shard: str) -> list[str]:
    """The noun of every pair of a shard whose noun is known."""
    return [noun for _, noun in shard_pairs(shard) if noun is not None]


# ---------------------------------------------------------------- class balance

def repeat_factors(nouns: Counter, balance: str, threshold: float) -> dict[str, float]:
    """LVIS's repeat factor sampling (Gupta et al. 2019) over nouns: a noun whose share f of the pairs
    is under `threshold` t has its pairs repeated r = sqrt(t / f) times (sqrt; LVIS's rule) or t / f
    times (inverse) per epoch on average; every other noun, once."""
    if balance == "none":
        return {}
    total = sum(nouns.values())
    power = 0.5 if balance == "sqrt" else 1.0
    return {noun: max(1.0, (threshold * total / count) ** power) for noun, count in nouns.items()}


def repeats(key: str, factor: float, seed: int, epoch: int) -> int:
    """How many times a pair comes in an epoch: floor(r), plus one with probability frac(r), drawn
    from (seed, epoch, key) alone, so that counting an epoch and streaming it agree. The draw is a
    cryptographic hash (CRC32 is affine: its draws for two epochs would be tied to each other)."""
    whole = math.floor(factor)
    fraction = factor - whole
    if fraction <= 0:
        return whole
    digest = hashlib.blake2b(f"{seed}-{epoch}-{key}".encode(), digest_size=8).digest()
    return whole + int(int.from_bytes(digest, "big") / 2**64 < fraction)


def shard_has_masks(url: str) -> bool:
    """Whether any pair of a shard has a mask.png (read off the member headers alone)."""
    return any(ext == MASK for _, ext, _ in _members(url, set(), warn=lambda *args: None))


def read_shard(url: str, read: set[str] | None = None) -> Iterator[dict]:
    """The samples of a tar (`KEY.EXT` members grouped by key, as webdataset groups them), robust
    to damage: a bad member header costs only that member (the reader skips to the next valid
    header), a truncated tar ends with its last whole member, a duplicate member is ignored. Each
    is logged. `read`: the extensions whose bytes are read (others are None), default all."""
    sample: dict | None = None
    for key, ext, data in _members(url, read):
        if sample is not None and sample["__key__"] != key:
            yield sample
            sample = None
        sample = sample or {"__key__": key, "__url__": url}
        if ext in sample:
            log.warning("%s: duplicate member %s.%s ignored", url, key, ext)
            continue
        sample[ext] = data
    if sample is not None:
        yield sample


def _members(url: str, read: set[str] | None, warn=log.warning) -> Iterator[tuple[str, str, bytes | None]]:
    try:
        tar = tarfile.open(url, ignore_zeros=True)  # ignore_zeros: resynchronise after a damaged header
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ShardError(f"--shards: {url} is not a readable tar ({type(error).__name__}: {error})") from None
    with tar:
        expected = 0
        while True:
            try:
                member = _next_member(tar)
                if member is not None and member.offset != expected:
                    warn("%s: %d bytes of damaged tar skipped before %s", url, member.offset - expected,
                         member.name)
                if member is None:
                    return
                expected = tar.offset
                parsed = _key_and_extension(member)
                if parsed is None:
                    continue
                wanted = read is None or parsed[1] in read
                data = tar.extractfile(member).read() if wanted else None
                if wanted and len(data) != member.size:
                    raise tarfile.ReadError("unexpected end of data")
            except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
                warn("%s: the tar ends early (%s: %s); its damaged last sample is skipped", url,
                     type(error).__name__, error)
                return
            yield (*parsed, data)


def _next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    """tar.next(), stepping over a damaged header block by block: tarfile does so itself (with
    ignore_zeros) for a lone header, not for one that follows a PAX or GNU header."""
    while True:
        start = tar.offset
        try:
            return tar.next()
        except tarfile.ReadError as error:
            if "unexpected end of data" in str(error) or tar.offset != start:
                raise
            tar.offset = start + tarfile.BLOCKSIZE


def _key_and_extension(member: tarfile.TarInfo) -> tuple[str, str] | None:
    """webdataset's grouping: `base_plus_ext` (the key runs to the first dot of the basename), its
    metadata members skipped, extensions lower-cased as its `group_by_keys` does."""
    if not member.isfile() or META_MEMBER.search(member.name):
        return None
    key, extension = base_plus_ext(member.name)
    return None if key is None else (key, extension.lower())


@dataclass
class Corpus:
    """The shards of a training run, their sizes and the noun vocabulary; with `balance`, the repeat
    factor of every pair whose noun is repeated (by key: a pair whose txt member was lost keeps its
    index noun's factor, in the epoch's count and in the stream alike)."""

    shards: list[str]
    counts: list[int]
    vocabulary: list[str]
    repeat: dict[str, float] = field(default_factory=dict)  # pair key -> repeat factor, for factors > 1
    shard_keys: list[list[str]] = field(default_factory=list)  # per shard, the keys in `repeat`

    @classmethod
    def scan(cls, pattern, balance: str = "none", threshold: float = 0.01) -> Corpus:
        shards = expand_shards(pattern)
        scanned = [shard_pairs(shard) for shard in shards]
        nouns = Counter(noun for pairs in scanned for _, noun in pairs if noun is not None)
        if not nouns:
            raise ShardError(f"--shards: {len(shards)} shard(s) but no pairs in them")
        factors = {noun: factor for noun, factor in repeat_factors(nouns, balance, threshold).items() if factor > 1}
        repeat = {key: factors[noun] for pairs in scanned for key, noun in pairs if noun in factors}
        shard_keys = [[key for key, _ in pairs if key in repeat] for pairs in scanned] if repeat else []
        return cls(shards, [len(pairs) for pairs in scanned], sorted(nouns), repeat, shard_keys)

    @property
    def size(self) -> int:
        return sum(self.counts)

    def epoch_counts(self, seed: int, epoch: int) -> list[int]:
        """Pairs per shard in this epoch, repeats included."""
        if not self.repeat:
            return self.counts
        return [count + sum(repeats(key, self.repeat[key], seed, epoch) - 1 for key in keys)
                for count, keys in zip(self.counts, self.shard_keys, strict=True)]


def deal_shards(shards: list, seed: int, epoch: int, workers: int, ranks: int = 1,
                counts: list[int] | None = None) -> list[list[list]]:
    """The epoch's shards per data rank, per loader worker. The shards are shuffled (seeded), then
    each goes to the rank with the fewest pairs so far (`counts`, per shard; ties: the fewest shards,
    then the lowest rank), and each rank's shards round-robin to its workers."""
    order, workers = list(range(len(shards))), max(1, workers)
    random.Random(f"{seed}-{epoch}").shuffle(order)  # the permutation depends only on the length
    dealt: list[list[int]] = [[] for _ in range(ranks)]
    pairs = [0] * ranks
    for index in order:
        rank = min(range(ranks), key=lambda r: (pairs[r], len(dealt[r]), r))
        dealt[rank].append(index)
        pairs[rank] += counts[index] if counts is not None else 1
    return [[[shards[i] for i in mine[worker::workers]] for worker in range(workers)] for mine in dealt]


def batches_in_epoch(counts: list[int], seed: int, epoch: int, workers: int, batch_size: int, ranks: int = 1) -> int:
    """How many global batches an epoch has, given the pairs per shard: as many as the data rank
    with the most local batches (of `batch_size` pairs) yields."""
    dealt = deal_shards(list(range(len(counts))), seed, epoch, workers, ranks, counts)
    return max(sum(math.ceil(sum(counts[i] for i in shards) / batch_size) for shards in rank) for rank in dealt)


@dataclass
class PairStream(torch.utils.data.IterableDataset):
    """One data rank's batches of {"images", "masks", "labels", "nouns", "keys", "worker", "samples"}
    for one epoch, read from its own shards only (`deal_shards`).

    `samples` counts the raw samples a batch used up (an undecodable one is skipped with a
    warning but still counted, so that a resumed run skips past it too). `first_worker` rotates
    which logical worker the loader's worker 0 plays, so that a resumed epoch continues the
    round-robin where it stopped."""

    shards: list[str]
    vocabulary: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    batch_size: int  # this data rank's local batch
    seed: int = 0
    epoch: int = 0
    shuffle_buffer: int = 2000
    skip: dict[int, int] = field(default_factory=dict)  # logical worker -> samples already consumed
    first_worker: int = 0
    repeat: dict[str, float] = field(default_factory=dict)  # pair key -> repeat factor (Corpus.repeat)
    rank: int = 0  # this stream's data rank, of `ranks`
    ranks: int = 1
    counts: list[int] | None = None  # pairs per shard this epoch (Corpus.epoch_counts), to balance the ranks

    def __post_init__(self):
        super().__init__()
        self.label_of = {noun: i for i, noun in enumerate(self.vocabulary)}
        self._masked_shards: dict[str, bool] = {}  # url -> whether its pairs have mask.png members

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        worker = (worker + self.first_worker) % workers
        mine = deal_shards(self.shards, self.seed, self.epoch, workers, self.ranks, self.counts)[self.rank][worker]
        if not mine:  # fewer shards than data ranks x workers: this worker has none this epoch
            return
        # every pair, whole or damaged, as Corpus counts them; a damaged one is skipped and counted
        samples = (s for url in mine for s in self._read(url) if is_pair(s))
        if self.repeat:
            samples = self._repeated(samples)
        if self.shuffle_buffer > 1:
            # stream s = worker x ranks + rank: with one data rank, stream s is loader worker s
            rng = random.Random(f"{self.seed}-{self.epoch}-{worker * self.ranks + self.rank}")
            samples = wds.filters.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
        samples = itertools.islice(samples, self.skip.get(worker, 0), None)
        for chunk in _chunks(samples, self.batch_size):
            decoded = [d for d in map(self._decode_or_skip, chunk) if d is not None]
            yield {**self._collate(decoded), "worker": worker, "samples": len(chunk),
                   "skipped": len(chunk) - len(decoded)}

    def _read(self, url: str) -> Iterator[dict]:
        return read_shard(url)

    def _repeated(self, samples: Iterator[dict]) -> Iterator[dict]:
        """Each pair as many times as `repeats` says (before the shuffle: copies spread out)."""
        for sample in samples:
            factor = self.repeat.get(sample["__key__"], 1.0)
            for _ in range(repeats(sample["__key__"], factor, self.seed, self.epoch)):
                yield sample

    def _decode_or_skip(self, sample: dict) -> dict | None:
        try:
            return self._decode(sample)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            log.warning("skipping pair %s: %s: %s", sample.get("__key__"), type(error).__name__, error)
            return None

    def _decode(self, sample: dict) -> dict:
        data = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if data is None:
            raise ValueError("no image member (lost to a damaged tar?)")
        if "txt" not in sample:
            raise ValueError("no txt member, so no noun (lost to a damaged tar?)")
        if MASK not in sample and self._shard_has_masks(sample["__url__"]):
            raise ValueError("no mask.png member, while the shard's other pairs have one (lost to a damaged tar?)")
        pixels = torch.from_numpy(_open_image(data, "RGB").copy()).permute(2, 0, 1)
        if MASK in sample:
            mask = torch.from_numpy(_open_image(sample[MASK], "L") > 127)
        else:
            mask = self._mask_from_fill(pixels)
        noun = sample["txt"].decode("utf-8").strip()
        return {"pixels": pixels, "mask": mask, "noun": noun, "key": sample["__key__"]}

    def _shard_has_masks(self, url: str) -> bool:
        if url not in self._masked_shards:
            self._masked_shards[url] = shard_has_masks(url)
        return self._masked_shards[url]

    def _mask_from_fill(self, pixels: torch.Tensor) -> torch.Tensor:
        fill = torch.tensor([round(255 * m) for m in self.mean], dtype=torch.int16)[:, None, None]
        return ((pixels.to(torch.int16) - fill).abs() > FILL_TOLERANCE).any(0)

    def _collate(self, decoded: list[dict]) -> dict:
        size = self.image_size
        if not decoded:
            return {"images": torch.zeros(0, 3, size, size), "masks": torch.zeros(0, size, size, dtype=torch.bool),
                    "labels": torch.zeros(0, dtype=torch.long), "nouns": [], "keys": []}
        unknown = [(d["key"], d["noun"]) for d in decoded if d["noun"] not in self.label_of]
        if unknown:
            raise ShardError(f"pair {unknown[0][0]}: noun {unknown[0][1]!r} is not in the corpus vocabulary "
                             "(the shards changed since the run started?)")
        images = torch.stack([_resize(d["pixels"].float(), size, "bicubic") for d in decoded])
        masks = torch.stack([_resize(d["mask"][None].float(), size, "nearest-exact")[0] > 0.5 for d in decoded])
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        images = (images.clamp(0, 255) / 255.0 - mean) / std
        nouns = [d["noun"] for d in decoded]
        labels = torch.tensor([self.label_of[noun] for noun in nouns])
        return {"images": images, "masks": masks, "labels": labels, "nouns": nouns, "keys": [d["key"] for d in decoded]}


def _open_image(data: bytes, mode: str) -> np.ndarray:
    """Decoded pixels; an image larger than MAX_PIXELS is refused before it is decoded (a small file
    can hold a huge, highly compressed image)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"image of {width}x{height} pixels, over the limit of {MAX_PIXELS}")
        return np.asarray(image.convert(mode))


def _resize(tensor: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if tensor.shape[-2:] == (size, size):
        return tensor
    kwargs = {"antialias": True, "align_corners": False} if mode == "bicubic" else {}
    return F.interpolate(tensor[None], size=(size, size), mode=mode, **kwargs)[0]


def _chunks(iterable, size: int):
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def loader(stream: PairStream, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       persistent_workers=False)

