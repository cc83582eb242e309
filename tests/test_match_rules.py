"""The pair-selection rules of `select_pairs` on hand-made (proposals x nouns) similarity matrices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dataengine.config import MatchConfig
from dataengine.match import (
    BELOW_MIN_MARGIN,
    BELOW_MIN_SCORE,
    NO_FREE_PROPOSAL,
    OVER_MAX_PAIRS,
    select_pairs,
)

REASONS = {BELOW_MIN_SCORE, BELOW_MIN_MARGIN, NO_FREE_PROPOSAL, OVER_MAX_PAIRS, "too_few_mentions", "not_mutual_best",
           "outside_vocabulary_top_k"}


def pairs_of(selection) -> dict[int, tuple[int, float]]:
    return {c.noun_index: (c.proposal_index, c.score) for c in selection.pairs}


def rejects_of(selection) -> dict[int, str]:
    return {c.noun_index: reason for c, reason in selection.rejects}


def check_partition(selection, num_nouns: int) -> None:
    """Every noun is in exactly one place: the pairs or the rejects."""
    nouns = [c.noun_index for c in selection.pairs] + [c.noun_index for c, _ in selection.rejects]
    assert sorted(nouns) == list(range(num_nouns))
    assert {reason for _, reason in selection.rejects} <= REASONS


def best_total(similarity: np.ndarray, nouns: list[int]) -> float:
    """Brute-force maximum total score of a one-to-one assignment of as many `nouns` as there are proposals."""
    num_proposals = similarity.shape[0]
    size = min(num_proposals, len(nouns))
    best = -np.inf
    for chosen in itertools.combinations(nouns, size):
        for proposals in itertools.permutations(range(num_proposals), size):
            best = max(best, sum(similarity[p, n] for p, n in zip(proposals, chosen, strict=True)))
    return best


# ---------------------------------------------------------------------------------------------
# the method's rule: argmax per noun


def test_argmax_per_noun_with_margin():
    similarity = np.array([
        [0.10, 0.50, 0.30],
        [0.40, 0.20, 0.30],
        [0.35, 0.45, 0.05],
    ])
    selection = select_pairs(similarity, MatchConfig())
    assert selection.rejects == []
    assert [c.noun_index for c in selection.pairs] == [0, 1, 2]
    assert [c.proposal_index for c in selection.pairs] == [1, 0, 0]  # ties: the first proposal
    np.testing.assert_allclose([c.score for c in selection.pairs], [0.40, 0.50, 0.30])
    np.testing.assert_allclose([c.margin for c in selection.pairs], [0.05, 0.05, 0.0], atol=1e-12)


def test_proposals_may_be_shared_without_one_to_one():
    similarity = np.array([[0.9, 0.8], [0.1, 0.2]])
    selection = select_pairs(similarity, MatchConfig())
    assert [c.proposal_index for c in selection.pairs] == [0, 0]


def test_single_proposal_has_no_margin():
    similarity = np.array([[0.3, -0.2, 0.7]])
    selection = select_pairs(similarity, MatchConfig(min_margin=0.5))
    assert selection.rejects == []  # no margin to compare: min_margin does not apply
    assert [c.margin for c in selection.pairs] == [None, None, None]
    assert [c.proposal_index for c in selection.pairs] == [0, 0, 0]
    np.testing.assert_allclose([c.score for c in selection.pairs], [0.3, -0.2, 0.7])


def test_no_nouns():
    selection = select_pairs(np.zeros((3, 0)), MatchConfig(min_score=0.1, one_to_one=True, max_pairs_per_image=2))
    assert selection.pairs == [] and selection.rejects == []


# ---------------------------------------------------------------------------------------------
# min_score / min_margin


def test_min_score_rejects_below():
    similarity = np.array([
        [0.20, 0.50, 0.10],
        [0.10, 0.30, 0.24],
    ])
    selection = select_pairs(similarity, MatchConfig(min_score=0.25))
    assert pairs_of(selection) == {1: (0, 0.50)}
    assert rejects_of(selection) == {0: BELOW_MIN_SCORE, 2: BELOW_MIN_SCORE}
    rejected = {c.noun_index: c for c, _ in selection.rejects}
    assert rejected[0].proposal_index == 0 and rejected[0].score == pytest.approx(0.20)
    assert rejected[2].proposal_index == 1 and rejected[2].score == pytest.approx(0.24)
    assert rejected[2].margin == pytest.approx(0.14)
    check_partition(selection, 3)


def test_min_score_boundary_is_kept():
    selection = select_pairs(np.array([[0.5], [0.1]]), MatchConfig(min_score=0.5))
    assert pairs_of(selection) == {0: (0, 0.5)}


def test_min_score_accepts_negative_similarities():
    similarity = np.array([[-0.3, -0.6], [-0.5, -0.7]])
    selection = select_pairs(similarity, MatchConfig(min_score=-0.4))
    assert pairs_of(selection) == {0: (0, -0.3)}
    assert rejects_of(selection) == {1: BELOW_MIN_SCORE}


def test_min_margin_rejects_ambiguous_nouns():
    similarity = np.array([
        [0.50, 0.40, 0.31],
        [0.48, 0.10, 0.30],
        [0.10, 0.20, 0.05],
    ])
    selection = select_pairs(similarity, MatchConfig(min_margin=0.05))
    assert pairs_of(selection) == {1: (0, 0.40)}
    assert rejects_of(selection) == {0: BELOW_MIN_MARGIN, 2: BELOW_MIN_MARGIN}
    margins = {c.noun_index: c.margin for c, _ in selection.rejects}
    assert margins[0] == pytest.approx(0.02) and margins[2] == pytest.approx(0.01)
    check_partition(selection, 3)


def test_min_margin_boundary_is_kept():
    selection = select_pairs(np.array([[0.75], [0.5]]), MatchConfig(min_margin=0.25))
    assert pairs_of(selection) == {0: (0, 0.75)}
    assert selection.pairs[0].margin == 0.25


def test_min_score_is_checked_before_min_margin():
    similarity = np.array([[0.10, 0.90], [0.09, 0.10]])  # noun 0 fails both rules, noun 1 neither
    selection = select_pairs(similarity, MatchConfig(min_score=0.5, min_margin=0.05))
    assert rejects_of(selection) == {0: BELOW_MIN_SCORE}
    assert pairs_of(selection) == {1: (0, 0.90)}


# ---------------------------------------------------------------------------------------------
# one_to_one


def test_one_to_one_resolves_a_collision():
    # both nouns' argmax is proposal 0; noun 0 keeps it, noun 1 moves to its next best
    similarity = np.array([
        [0.9, 0.8],
        [0.1, 0.7],
        [0.0, 0.2],
    ])
    greedy = select_pairs(similarity, MatchConfig())
    assert [c.proposal_index for c in greedy.pairs] == [0, 0]
    selection = select_pairs(similarity, MatchConfig(one_to_one=True))
    assert selection.rejects == []
    assert pairs_of(selection) == {0: (0, 0.9), 1: (1, 0.7)}


def test_one_to_one_maximizes_the_total_score():
    # giving the contested proposal 0 to its best noun (0.9) would leave noun 1 with 0.1 (total 1.0);
    # the best assignment moves noun 0 to proposal 1 instead (0.8 + 0.85 = 1.65)
    similarity = np.array([
        [0.90, 0.85],
        [0.80, 0.10],
    ])
    selection = select_pairs(similarity, MatchConfig(one_to_one=True))
    assert pairs_of(selection) == {0: (1, 0.80), 1: (0, 0.85)}
    total = sum(c.score for c in selection.pairs)
    assert total == pytest.approx(best_total(similarity, [0, 1]))
    for choice in selection.pairs:  # the score is the one of the proposal actually assigned
        assert choice.score == similarity[choice.proposal_index, choice.noun_index]


def test_one_to_one_more_nouns_than_proposals():
    similarity = np.array([
        [0.9, 0.8, 0.3],
        [0.5, 0.2, 0.6],
    ])
    selection = select_pairs(similarity, MatchConfig(one_to_one=True))
    # 0.9 + 0.6 (nouns 0 and 2) beats every other choice of two nouns and two proposals
    assert pairs_of(selection) == {0: (0, 0.9), 2: (1, 0.6)}
    assert rejects_of(selection) == {1: NO_FREE_PROPOSAL}
    assert sum(c.score for c in selection.pairs) == pytest.approx(best_total(similarity, [0, 1, 2]))
    check_partition(selection, 3)


def test_one_to_one_only_assigns_surviving_nouns():
    # noun 0 is rejected by min_score before the assignment: it must not take proposal 0 from noun 1
    similarity = np.array([
        [0.30, 0.80],
        [0.00, 0.75],
    ])
    selection = select_pairs(similarity, MatchConfig(min_score=0.5, one_to_one=True))
    assert rejects_of(selection) == {0: BELOW_MIN_SCORE}
    assert pairs_of(selection) == {1: (0, 0.80)}


def test_one_to_one_pairs_respect_min_score():
    similarity = np.array([
        [0.9, 0.8],
        [0.3, 0.1],
    ])
    selection = select_pairs(similarity, MatchConfig(min_score=0.5, one_to_one=True))
    check_partition(selection, 2)
    assert all(c.score >= 0.5 for c in selection.pairs)


# ---------------------------------------------------------------------------------------------
# max_pairs_per_image


def test_max_pairs_keeps_the_highest_scores():
    similarity = np.array([
        [0.3, 0.9, 0.1, 0.6],
        [0.2, 0.1, 0.5, 0.4],
    ])
    selection = select_pairs(similarity, MatchConfig(max_pairs_per_image=2))
    assert pairs_of(selection) == {1: (0, 0.9), 3: (0, 0.6)}
    assert [c.noun_index for c in selection.pairs] == [1, 3]  # pairs in noun order
    assert rejects_of(selection) == {0: OVER_MAX_PAIRS, 2: OVER_MAX_PAIRS}
    check_partition(selection, 4)


def test_max_pairs_ties_keep_the_earlier_noun():
    similarity = np.array([[0.5, 0.5, 0.5]])
    selection = select_pairs(similarity, MatchConfig(max_pairs_per_image=2))
    assert [c.noun_index for c in selection.pairs] == [0, 1]
    assert rejects_of(selection) == {2: OVER_MAX_PAIRS}


def test_max_pairs_larger_than_nouns_keeps_all():
    selection = select_pairs(np.array([[0.1, 0.2], [0.3, 0.0]]), MatchConfig(max_pairs_per_image=5))
    assert len(selection.pairs) == 2 and selection.rejects == []


def test_max_pairs_counts_after_the_other_rules():
    similarity = np.array([
        [0.95, 0.90, 0.20, 0.70],
        [0.10, 0.85, 0.15, 0.10],
    ])
    config = MatchConfig(min_score=0.5, min_margin=0.1, max_pairs_per_image=1)
    selection = select_pairs(similarity, config)
    assert rejects_of(selection) == {1: BELOW_MIN_MARGIN, 2: BELOW_MIN_SCORE, 3: OVER_MAX_PAIRS}
    assert pairs_of(selection) == {0: (0, 0.95)}


# ---------------------------------------------------------------------------------------------
# all options together, random matrices


CONFIGS = [
    MatchConfig(),
    MatchConfig(min_score=0.1),
    MatchConfig(min_margin=0.05),
    MatchConfig(one_to_one=True),
    MatchConfig(max_pairs_per_image=2),
    MatchConfig(min_score=0.0, min_margin=0.03, one_to_one=True, max_pairs_per_image=3),
    MatchConfig(min_score=-0.2, min_margin=0.0, one_to_one=True, max_pairs_per_image=1),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"s{c.min_score}-m{c.min_margin}-o{c.one_to_one}-x{c.max_pairs_per_image}")
def test_every_noun_ends_exactly_once(config):
    rng = np.random.default_rng(1234)
    for _ in range(150):
        num_proposals, num_nouns = int(rng.integers(1, 6)), int(rng.integers(0, 7))
        similarity = rng.uniform(-0.5, 0.6, size=(num_proposals, num_nouns))
        if rng.random() < 0.3:  # some exact ties
            similarity = np.round(similarity, 1)
        selection = select_pairs(similarity, config)
        check_partition(selection, num_nouns)
        counts = {n: 0 for n in range(num_nouns)}
        for choice in selection.pairs:
            counts[choice.noun_index] += 1
        for choice, _ in selection.rejects:
            counts[choice.noun_index] += 1
        assert set(counts.values()) <= {1}

        assert [c.noun_index for c in selection.pairs] == sorted(c.noun_index for c in selection.pairs)
        for choice in selection.pairs:
            assert choice.score == pytest.approx(similarity[choice.proposal_index, choice.noun_index])
            column = similarity[:, choice.noun_index]
            if num_proposals == 1:
                assert choice.margin is None
            else:
                top = np.sort(column)[::-1]
                assert choice.margin == pytest.approx(top[0] - top[1])
                if config.min_margin is not None:
                    assert choice.margin >= config.min_margin
            if not config.one_to_one:
                assert choice.score == column.max()
                if config.min_score is not None:
                    assert choice.score >= config.min_score
        if config.one_to_one:
            proposals = [c.proposal_index for c in selection.pairs]
            assert len(set(proposals)) == len(proposals)
            if config.max_pairs_per_image is None:
                survivors = [c.noun_index for c in selection.pairs] + [
                    c.noun_index for c, reason in selection.rejects if reason == NO_FREE_PROPOSAL
                ]
                if survivors:
                    total = sum(c.score for c in selection.pairs)
                    assert total == pytest.approx(best_total(similarity, survivors))
        else:
            assert NO_FREE_PROPOSAL not in {reason for _, reason in selection.rejects}
        if config.max_pairs_per_image is not None:
            assert len(selection.pairs) <= config.max_pairs_per_image
            over = [c.score for c, reason in selection.rejects if reason == OVER_MAX_PAIRS]
            if over:
                assert len(selection.pairs) == config.max_pairs_per_image
                assert min(c.score for c in selection.pairs) >= max(over)
        else:
            assert OVER_MAX_PAIRS not in {reason for _, reason in selection.rejects}


# ---------------------------------------------------------------- precision filters (issue 11)

from dataengine.match import VocabularyCheck  # noqa: E402
from dataengine.reasons import NOT_MUTUAL_BEST, OUTSIDE_VOCABULARY_TOP_K, TOO_FEW_MENTIONS  # noqa: E402

# 3 proposals x 3 nouns: noun 0 and noun 1 both prefer proposal 0, which prefers noun 0;
# noun 2 prefers proposal 2, which prefers it back.
SHARED = np.array([[0.9, 0.8, 0.1],
                   [0.2, 0.3, 0.2],
                   [0.1, 0.2, 0.7]])


def test_mutual_best_keeps_a_noun_only_where_its_proposal_prefers_it_back():
    selection = select_pairs(SHARED, MatchConfig(mutual_best=True))
    assert pairs_of(selection) == {0: (0, 0.9), 2: (2, 0.7)}
    assert rejects_of(selection) == {1: NOT_MUTUAL_BEST}
    assert rejects_of(select_pairs(SHARED, MatchConfig())) == {}  # off by default: the method's rule


def test_min_mentions_counts_the_captions_that_name_the_noun():
    selection = select_pairs(SHARED, MatchConfig(min_mentions=2), captions=[3, 1, 2])
    assert sorted(pairs_of(selection)) == [0, 2] and rejects_of(selection) == {1: TOO_FEW_MENTIONS}
    assert rejects_of(select_pairs(SHARED, MatchConfig(), captions=[3, 1, 2])) == {}


def vocabulary_of(rows: np.ndarray, columns: list[int | None], top_k: int) -> VocabularyCheck:
    return VocabularyCheck(lambda proposal: rows[proposal], columns, top_k)


def test_vocabulary_keeps_a_noun_within_the_top_k_of_its_region():
    # each proposal's cosine to a 4-noun vocabulary; the image's nouns are vocabulary nouns 3, 1, 0
    rows = np.array([[0.1, 0.5, 0.2, 0.4],   # proposal 0: ranks 1, 3, 2, 0
                     [0.3, 0.3, 0.3, 0.3],
                     [0.9, 0.1, 0.2, 0.3]])  # proposal 2: ranks 0, 3, 2, 1
    top1 = select_pairs(SHARED, MatchConfig(), vocabulary=vocabulary_of(rows, [3, 1, 0], 1))
    assert rejects_of(top1) == {0: OUTSIDE_VOCABULARY_TOP_K}  # noun 0 (vocabulary 3) is second on proposal 0
    assert sorted(pairs_of(top1)) == [1, 2]
    top2 = select_pairs(SHARED, MatchConfig(), vocabulary=vocabulary_of(rows, [3, 1, 0], 2))
    assert rejects_of(top2) == {}
    ties = select_pairs(SHARED[1:2], MatchConfig(), vocabulary=vocabulary_of(rows[1:2], [0, 1, 2], 1))
    assert rejects_of(ties) == {}  # a tie counts for the noun


def test_a_noun_the_vocabulary_lacks_fails_the_vocabulary_filter():
    rows = np.ones((3, 2))
    selection = select_pairs(SHARED, MatchConfig(), vocabulary=vocabulary_of(rows, [0, None, 1], 5))
    assert rejects_of(selection) == {1: OUTSIDE_VOCABULARY_TOP_K}


def test_filters_apply_in_the_documented_order():
    """A noun failing several filters gets the reason of the first in the order of dataengine.match."""
    rows = np.zeros((3, 3))
    config = MatchConfig(min_mentions=2, min_score=0.85, mutual_best=True)
    everything_fails = vocabulary_of(rows, [None, None, None], 1)
    selection = select_pairs(SHARED, config, captions=[1, 2, 2], vocabulary=everything_fails)
    assert rejects_of(selection) == {0: TOO_FEW_MENTIONS, 1: BELOW_MIN_SCORE, 2: BELOW_MIN_SCORE}
    config = MatchConfig(mutual_best=True)
    selection = select_pairs(SHARED, config, captions=[1, 1, 1], vocabulary=everything_fails)
    assert rejects_of(selection) == {0: OUTSIDE_VOCABULARY_TOP_K, 1: NOT_MUTUAL_BEST, 2: OUTSIDE_VOCABULARY_TOP_K}


def test_a_vocabulary_file_is_one_noun_per_line(tmp_path):
    from dataengine.config import ConfigError
    from dataengine.pipeline import read_vocabulary

    path = tmp_path / "vocabulary.txt"
    path.write_text("# ADE-150 nouns\nDog\n\n cat  # a comment\ndog\nstop sign\n")
    assert read_vocabulary(str(path)) == ["cat", "dog", "stop sign"]
    with pytest.raises(ConfigError, match="--vocabulary: cannot read"):
        read_vocabulary(str(tmp_path / "nope.txt"))


def test_one_to_one_checks_the_vocabulary_again_on_the_proposal_it_moves_a_noun_to():
    similarity = np.array([[0.9, 0.8], [0.85, 0.1]])  # both prefer proposal 0; the assignment moves noun 0 to 1
    rows = np.array([[0.9, 0.5, 0.2], [0.2, 0.5, 0.95]])  # over a 3-noun vocabulary; image nouns = columns 0, 1
    check = vocabulary_of(rows, [0, 1], 2)
    selection = select_pairs(similarity, MatchConfig(one_to_one=True), vocabulary=check)
    assert pairs_of(selection) == {1: (0, 0.8)}  # noun 1 on proposal 0: second of 3 there, kept
    assert rejects_of(selection) == {0: OUTSIDE_VOCABULARY_TOP_K}  # noun 0 is third on proposal 1
