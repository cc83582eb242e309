"""`dataengine filter`: the corpus-level post-pass (per-noun score quantile, per-noun cap)."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from readback import check_corpus
from test_ray import assert_same_output, image_keys
from test_resume import job

from dataengine.config import ConfigError, FilterConfig
from dataengine.pipeline import mine
from dataengine.postpass import FilteredWriter, decide, filter_corpus


def table(rows: list[tuple]) -> pa.Table:
    """(key, noun, score) or (key, noun, score, margin) rows; margin None where absent."""
    keys, nouns, scores, margins = zip(*[(*row, None)[:4] for row in rows], strict=True)
    return pa.table({"key": list(keys), "noun": list(nouns), "score": list(scores),
                     "margin": pa.array(list(margins), type=pa.float64())})


def reasons(dropped: dict) -> dict[str, str]:
    return {key: reason for key, (reason, _) in dropped.items()}


def test_the_quantile_drops_the_floor_of_q_n_lowest_of_each_noun_ties_by_key():
    rows = [("a1", "dog", 0.9), ("a2", "dog", 0.5), ("a3", "dog", 0.5), ("a4", "dog", 0.1), ("b1", "cat", 0.2)]
    assert reasons(decide(table(rows), FilterConfig(noun_quantile=0.5))) == {
        "a3": "below_noun_quantile", "a4": "below_noun_quantile"}  # 2 of 4 dogs; the lone cat stays
    assert reasons(decide(table(rows), FilterConfig(noun_quantile=0.8))) == {
        key: "below_noun_quantile" for key in ("a2", "a3", "a4")}  # floor(3.2) = 3
    assert decide(table(rows), FilterConfig(noun_quantile=0.0)) == {}


def test_the_cap_keeps_each_nouns_best_after_the_quantile():
    rows = [(f"d{i}", "dog", 1 - i / 10) for i in range(6)] + [("c0", "cat", 0.1), ("c1", "cat", 0.1)]
    dropped = reasons(decide(table(rows), FilterConfig(noun_quantile=0.5, max_pairs_per_noun=2)))
    assert dropped == {"d3": "below_noun_quantile", "d4": "below_noun_quantile", "d5": "below_noun_quantile",
                       "d2": "over_max_pairs_per_noun", "c1": "below_noun_quantile"}
    assert reasons(decide(table(rows), FilterConfig(max_pairs_per_noun=1))) == {
        **{f"d{i}": "over_max_pairs_per_noun" for i in range(1, 6)}, "c1": "over_max_pairs_per_noun"}


def test_a_noun_whose_median_margin_is_low_drops_all_its_pairs_before_the_other_filters():
    rows = [("d1", "dog", 0.9, 0.30), ("d2", "dog", 0.5, 0.02), ("d3", "dog", 0.4, 0.20),  # dog: median 0.20
            ("k1", "key", 0.8, 0.05), ("k2", "key", 0.7, 0.40), ("k3", "key", 0.6, 0.08), ("k4", "key", 0.5, None),
            ("s1", "sky", 0.3, None)]  # key: median of 0.05, 0.08, 0.40 = 0.08; sky has no margin at all
    dropped = decide(table(rows), FilterConfig(min_noun_margin=0.1))
    assert reasons(dropped) == {key: "below_noun_margin" for key in ("k1", "k2", "k3", "k4")}
    assert "median margin 0.0800 of its 4 pairs" in dropped["k2"][1]
    assert decide(table(rows), FilterConfig(min_noun_margin=0.08)) == {}  # at the threshold: kept
    even = [("a", "cup", 0.5, 0.1), ("b", "cup", 0.5, 0.2)]  # an even count: the mean of the middle two
    assert reasons(decide(table(even), FilterConfig(min_noun_margin=0.16))) == {"a": "below_noun_margin",
                                                                               "b": "below_noun_margin"}
    assert decide(table(even), FilterConfig(min_noun_margin=0.15)) == {}
    # the quantile and the cap act on the nouns that stay
    both = reasons(decide(table(rows), FilterConfig(min_noun_margin=0.1, max_pairs_per_noun=1)))
    assert both == {**{key: "below_noun_margin" for key in ("k1", "k2", "k3", "k4")},
                    "d2": "over_max_pairs_per_noun", "d3": "over_max_pairs_per_noun"}


def test_the_decision_does_not_depend_on_row_order():
    rows = [(f"k{i}", ("dog", "cat", "sky")[i % 3], round((i * 37 % 11) / 11, 3)) for i in range(60)]
    config = FilterConfig(noun_quantile=0.3, max_pairs_per_noun=7)
    assert decide(table(rows), config) == decide(table(rows[::-1]), config)


@pytest.fixture(scope="module")
def corpus(coco_mini, tmp_path_factory) -> Path:
    config = job(coco_mini, tmp_path_factory.mktemp("mined") / "corpus", limit=24)
    mine(config)
    return Path(config.out)


def settings(corpus: Path, out: Path, **overrides) -> FilterConfig:
    return FilterConfig(**{"corpus": str(corpus), "out": str(out), "noun_quantile": 0.5, "max_pairs_per_noun": 2,
                           "progress": False, **overrides})


def test_the_filtered_corpus_accounts_for_every_input_and_copies_kept_pairs_byte_for_byte(coco_mini, corpus, tmp_path):
    manifest = filter_corpus(settings(corpus, tmp_path / "f"))
    source = pq.read_table(corpus / "index").to_pylist()
    keys = sorted(image_keys(coco_mini))[:24]
    parts = check_corpus(tmp_path / "f", set(keys))
    kept = {row["key"] for row in parts["index"]}
    new = [row for row in parts["rejects"] if row["stage"] == "filter"]
    dropped = {row["key"] for row in new if row["level"] == "noun"}
    assert kept and dropped and not kept & dropped
    assert kept | dropped == {row["key"] for row in source}
    assert manifest["counts"]["pairs"] == len(kept) and manifest["filter"]["corpus_pairs"] == len(source)
    per_noun: dict[str, int] = {}
    for row in parts["index"]:
        per_noun[row["noun"]] = per_noun.get(row["noun"], 0) + 1
    assert max(per_noun.values()) <= 2
    by_key = {sample["__key__"]: sample for sample in parts["samples"]}
    original = {row["key"]: row for row in source}
    for key in kept:  # the index rows and the pairs themselves are the corpus's
        assert json.loads(by_key[key]["json"])["score"] == original[key]["score"]


def test_an_interrupted_filter_resumes_to_the_uninterrupted_output(corpus, tmp_path, monkeypatch):
    filter_corpus(settings(corpus, tmp_path / "whole"))
    real = FilteredWriter.write_filtered_shard
    calls = []

    def crash_on_second(self, source, entry, dropped):
        calls.append(entry["shard"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands for a kill: nothing after it runs
        return real(self, source, entry, dropped)

    monkeypatch.setattr(FilteredWriter, "write_filtered_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        filter_corpus(settings(corpus, tmp_path / "resumed"))
    monkeypatch.setattr(FilteredWriter, "write_filtered_shard", real)
    manifest = filter_corpus(settings(corpus, tmp_path / "resumed"))
    assert manifest["resumed_shards"] == 1
    assert_same_output(tmp_path / "resumed", tmp_path / "whole")
    for name in ("stats/000000.json", "stats/000002.json"):
        assert filecmp.cmp(tmp_path / "resumed" / name, tmp_path / "whole" / name, shallow=False)


def test_other_settings_into_the_same_folder_are_refused_unless_overwrite(corpus, tmp_path):
    filter_corpus(settings(corpus, tmp_path / "f"))
    with pytest.raises(ConfigError, match="settings.max_pairs_per_noun"):
        filter_corpus(settings(corpus, tmp_path / "f", max_pairs_per_noun=3))
    manifest = filter_corpus(settings(corpus, tmp_path / "f", max_pairs_per_noun=3), overwrite=True)
    assert manifest["filter"]["max_pairs_per_noun"] == 3


@pytest.mark.parametrize("overrides, message", [
    ({"noun_quantile": None, "max_pairs_per_noun": None}, "nothing to do"),
    ({"min_noun_margin": -0.1}, "min_noun_margin"),
    ({"noun_quantile": 1.0}, "noun_quantile"),
    ({"max_pairs_per_noun": 0}, "max_pairs_per_noun"),
])
def test_bad_settings_are_refused(corpus, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        filter_corpus(settings(corpus, tmp_path / "f", **overrides))


def test_an_unfinished_corpus_and_the_corpus_itself_as_out_are_refused(corpus, tmp_path):
    with pytest.raises(ConfigError, match="not a finished corpus"):
        filter_corpus(settings(tmp_path / "nothing", tmp_path / "f"))
    with pytest.raises(ConfigError, match="the corpus itself"):
        filter_corpus(settings(corpus, corpus))


def test_cli_filter(corpus, tmp_path, capsys):
    from dataengine.cli import main

    assert main(["filter", str(corpus), "--out", str(tmp_path / "f"), "--max-pairs-per-noun", "1", "--no-progress"]) == 0
    assert "over_max_pairs_per_noun" in capsys.readouterr().out
    assert main(["filter", str(corpus), "--out", str(tmp_path / "m"), "--min-noun-margin", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "below_noun_margin" in out and "kept 0 of" in out  # no margin reaches 2: every noun with one goes
    assert main(["filter", str(corpus), "--out", str(tmp_path / "g"), "--no-progress"]) == 2
    assert "nothing to do" in capsys.readouterr().err
