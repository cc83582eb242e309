"""Noun extraction throughput (captions/s) on COCO captions, in one run:
spaCy with the parser (the naive set-up) vs this project's pipeline (tagger + lemmatizer only),
in one process, with spaCy's own n_process, and with this project's worker processes.

    python bench/bench_nouns.py [--captions 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from common import offline_environment, require_coco_mini


def throughput(extractor, captions: list[str]) -> float:
    extractor.mentions(captions[:2000])  # warm-up: starts worker processes (a one-off few seconds per run)
    start = time.perf_counter()
    extractor.mentions(captions)
    rate = len(captions) / (time.perf_counter() - start)
    extractor.close()
    return rate


def spacy_n_process_throughput(extractor, captions: list[str], processes: int) -> float:
    """spaCy's own multiprocessing: workers ship whole Doc objects back to the parent."""
    def run(texts):
        return [extractor._mentions_in(doc) for doc in extractor.nlp.pipe(texts, batch_size=512, n_process=processes)]

    run(captions[:2000])
    start = time.perf_counter()
    run(captions)
    return len(captions) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=20000, help="captions to process (COCO captions, repeated)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    offline_environment()

    from dataengine import nouns
    from dataengine.config import NounConfig

    folder = require_coco_mini()
    texts = [a["caption"] for a in json.loads((folder / "captions.json").read_text())["annotations"]]
    captions = (texts * (args.captions // len(texts) + 1))[: args.captions]

    excluded = nouns.EXCLUDED_COMPONENTS
    nouns.EXCLUDED_COMPONENTS = ("ner",)
    with_parser = throughput(nouns.NounExtractor(NounConfig()), captions)
    nouns.EXCLUDED_COMPONENTS = excluded
    one = throughput(nouns.NounExtractor(NounConfig()), captions)
    spacy_many = spacy_n_process_throughput(nouns.NounExtractor(NounConfig()), captions, args.processes)
    many = throughput(nouns.NounExtractor(NounConfig(n_process=args.processes, batch_size=512)), captions)
    print(f"{len(captions)} COCO captions, {os.cpu_count()} cores")
    print(f"with parser, 1 process          : {with_parser:8.0f} captions/s")
    print(f"tagger+lemmatizer, 1 process    : {one:8.0f} captions/s  ({one / with_parser:.2f}x)")
    print(f"same, spaCy n_process={args.processes}       : {spacy_many:8.0f} captions/s  ({spacy_many / with_parser:.2f}x)")
    print(f"tagger+lemmatizer, {args.processes} processes  : {many:8.0f} captions/s  ({many / with_parser:.2f}x)")


if __name__ == "__main__":
    main()
