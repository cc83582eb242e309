"""Class-balanced sampling in `dataengine finetune`: repeat factor sampling over nouns."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from pairs import write_pair_shards
from test_finetune import _losses, tiny

from finetune.config import TrainConfigError
from finetune.shards import Corpus, PairStream, repeat_factors, repeats
from finetune.train import Trainer, train

# 40 squares and 4 circles: the circles are a tenth of the squares
SKEWED = ["square"] * 10 + ["circle"]


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    return write_pair_shards(tmp_path_factory.mktemp("skewed") / "shards", pairs=44, per_shard=16, nouns=SKEWED)


def test_repeat_factors_follow_lvis_rule():
    nouns = Counter({"dog": 90, "cat": 9, "yak": 1})
    assert repeat_factors(nouns, "none", 0.1) == {}
    sqrt = repeat_factors(nouns, "sqrt", 0.1)
    assert sqrt["dog"] == 1.0 and sqrt["cat"] == pytest.approx(math.sqrt(0.1 / 0.09))
    assert sqrt["yak"] == pytest.approx(math.sqrt(10))
    assert repeat_factors(nouns, "inverse", 0.1)["yak"] == pytest.approx(10)


def test_repeats_round_stochastically_to_the_factor_on_average():
    draws = [repeats(f"k{i}", 2.3, seed=0, epoch=1) for i in range(20000)]
    assert set(draws) == {2, 3} and sum(draws) / len(draws) == pytest.approx(2.3, abs=0.02)
    assert draws == [repeats(f"k{i}", 2.3, seed=0, epoch=1) for i in range(20000)]  # a function of its inputs
    assert draws != [repeats(f"k{i}", 2.3, seed=0, epoch=2) for i in range(20000)]  # new draws each epoch


@pytest.mark.parametrize("other", [{"epoch": 2}, {"epoch": 4}, {"seed": 1}])
def test_the_draws_of_two_epochs_or_seeds_are_independent(other):
    def extra(seed=0, epoch=1):
        return {i for i in range(20000) if repeats(f"k{i}", 1.5, seed=seed, epoch=epoch) == 2}

    first, second = extra(), extra(**other)
    assert len(first & second) / 20000 == pytest.approx(0.25, abs=0.02)  # P(both) = 0.5 * 0.5


@pytest.mark.parametrize("workers", [0, 2])
def test_the_stream_yields_what_the_epoch_count_says_with_rare_nouns_repeated(skewed, workers):
    corpus = Corpus.scan(skewed, "sqrt", 0.5)
    stream = PairStream(corpus.shards, corpus.vocabulary, 224, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), 8, epoch=3,
                        repeat=corpus.repeat)
    nouns = Counter(noun for batch in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
                    for noun in batch["nouns"])
    assert sum(nouns.values()) == sum(corpus.epoch_counts(0, 3))
    assert nouns["square"] == 40  # above the threshold: once each
    factor = math.sqrt(0.5 / (4 / 44))
    assert math.floor(factor) * 4 <= nouns["circle"] <= math.ceil(factor) * 4 and nouns["circle"] > 8


def test_balanced_training_counts_its_steps_and_resumes_exactly(skewed, tmp_path):
    overrides = dict(mode="mpt", balance="sqrt", balance_threshold=0.5, checkpoint_every=2, epochs=2)
    trainer = Trainer(tiny(skewed, tmp_path / "count", **overrides))
    assert sum(trainer.steps_in_phase()) > math.ceil(44 / 8) * 2  # the repeats make longer epochs
    whole = train(tiny(skewed, tmp_path / "whole", **overrides))
    assert whole["phases"][0]["steps"] == sum(trainer.steps_in_phase())
    train(tiny(skewed, tmp_path / "parts", max_steps=5, **overrides))
    train(tiny(skewed, tmp_path / "parts", **overrides), resume=True)
    assert _losses(tmp_path / "parts") == _losses(tmp_path / "whole")


def test_bad_balance_settings_are_refused(skewed, tmp_path):
    with pytest.raises(TrainConfigError, match="--balance"):
        tiny(skewed, tmp_path / "a", balance="square-root")
    with pytest.raises(TrainConfigError, match="--balance-threshold"):
        tiny(skewed, tmp_path / "a", balance="sqrt", balance_threshold=0)
