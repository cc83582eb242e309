"""`dataengine report`: the page's structure on a COCO and a world corpus (every section, every
image decodes, no external URL), precision through the synonym table on hand-made pairs, and a
real browser (headless Chromium) that renders the page from a file:// URL."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from test_resume import job

from dataengine.cli import main
from dataengine.config import ConfigError
from dataengine.pipeline import mine
from dataengine.report import (
    SECTIONS,
    GroundTruth,
    ReportConfig,
    build_report,
    load_synonyms,
    summarize_judgements,
)


class PageParser(HTMLParser):
    """Sections, images, anything that could load a resource, and the inline code of a page."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.links, self.code, self.cards = [], [], [], [], 0
        self._in_code = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "figure" and attrs.get("class") == "card":
            self.cards += 1
        self.links += [attrs[name] for name in ("href", "src", "action", "data", "srcset") if name in attrs and tag != "img"]
        self.links += [attrs["style"]] if "url(" in attrs.get("style", "") else []
        self._in_code = tag in ("script", "style")

    def handle_endtag(self, tag):
        self._in_code = False

    def handle_data(self, data):
        if self._in_code:
            self.code.append(data)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    assert parser.sections == list(SECTIONS)
    assert not re.search(r"https?:|//|url\(|import", "".join(parser.code)), "inline code that loads something"
    for source in parser.images:
        assert source.startswith("data:image/"), source[:40]
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).load()  # decodes
    assert not parser.links
    return parser


@pytest.fixture(scope="module")
def coco_corpus(coco_mini, tmp_path_factory) -> Path:
    config = job(coco_mini, tmp_path_factory.mktemp("report") / "corpus", limit=16)
    mine(config)
    return Path(config.out)


def test_the_report_of_a_coco_corpus_has_every_section_and_only_embedded_images(coco_corpus, tmp_path):
    out = build_report(ReportConfig(str(coco_corpus), html=str(tmp_path / "report.html"), max_gallery=3, top_nouns=2))
    page = parse_page(out)
    assert page.cards >= 3 and len(page.images) > 8  # plots, source views and crops
    text = out.read_text()
    for heading in ("counts", "rejects by reason", "time per stage", "precision per noun", "confusion",
                    "lowest scores", "smallest margins", "a random sample", "noun-filter"):
        assert heading in text, heading


def test_a_caption_cannot_inject_markup_into_the_page(coco_corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    hostile = tmp_path / "corpus"
    shutil.copytree(coco_corpus, hostile)
    path = next((hostile / "index").glob("*.parquet"))
    original = pq.read_table(path)
    table = original.to_pandas()
    table["caption"] = '<script>alert("x")</script><img src="https://example.com/x.png">'
    pq.write_table(pa.Table.from_pandas(table, schema=original.schema, preserve_index=False), path)
    out = build_report(ReportConfig(str(hostile), max_gallery=50, top_nouns=1))
    parse_page(out)
    assert "<script>alert" not in out.read_text()


def test_the_report_of_a_world_corpus_measures_the_same_precision_as_the_world(tmp_path):
    from finetune.world.loop import mine_split, pair_precision
    from finetune.world.scenes import generate_world

    generate_world(tmp_path / "world", scenes=12, seed=7, heldout=0.25)
    split = tmp_path / "world" / "train"
    mine_split(split, tmp_path / "corpus", "annotations", "dataengine-tiny", "local", False)
    out = build_report(ReportConfig(str(tmp_path / "corpus"), max_gallery=2, top_nouns=1))
    parse_page(out)
    expected = pair_precision(tmp_path / "corpus", split)[0]["precision"]  # every pair counts there
    assert (f"<th>precision over all pairs (%), nouns naming no category counted wrong</th><td>{expected}</td>"
            in out.read_text())


def instances_file(tmp_path: Path) -> tuple[Path, dict, dict]:
    """One 20x20 image with a dog (left half) and a person (a box on the right)."""
    dog = np.zeros((20, 20), dtype=np.uint8, order="F")
    dog[:, :10] = 1
    person = np.zeros((20, 20), dtype=np.uint8, order="F")
    person[5:15, 12:18] = 1
    rles = {name: mask_utils.encode(mask) for name, mask in (("dog", dog), ("person", person))}
    data = {"images": [{"id": 5, "height": 20, "width": 20}],
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 18, "iscrowd": 0,
                             "segmentation": {"size": [20, 20], "counts": rles["dog"]["counts"].decode()}},
                            {"id": 2, "image_id": 5, "category_id": 1, "iscrowd": 0,
                             "segmentation": [[12, 5, 18, 5, 18, 15, 12, 15]]}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, rles["dog"], rles["person"]


def pair(noun: str, rle: dict, score: float) -> dict:
    return {"key": noun, "image_id": "5", "image_height": 20, "image_width": 20, "noun": noun, "score": score,
            "margin": 0.1, "mask_counts": rle["counts"].decode()}


def test_precision_through_the_synonym_table_on_hand_made_pairs(tmp_path):
    path, dog, person = instances_file(tmp_path)
    truth = GroundTruth(path)
    assert truth.judge(pair("dog", dog, 0.9)) == ("dog", "dog")  # right
    assert truth.judge(pair("cat", dog, 0.8)) == ("cat", "dog")  # wrong: a cat noun on the dog
    assert truth.judge(pair("puppy", dog, 0.7)) == ("dog", "dog")  # a synonym: right
    assert truth.judge(pair("man", person, 0.6)) == ("person", "person")  # a synonym, polygon ground truth
    assert truth.judge(pair("tree", person, 0.5)) == (None, "person")  # names no category: not scored
    result = summarize_judgements([(row["noun"], row["score"], row["margin"], *truth.judge(row)) for row in (
        pair("dog", dog, 0.9), pair("cat", dog, 0.8), pair("puppy", dog, 0.7), pair("man", person, 0.6),
        pair("tree", person, 0.5))])
    assert result["precision"] == 75.0 and result["scored_pairs"] == 4 and result["unscored_nouns"] == 1
    assert result["precision_all_pairs"] == 60.0
    assert result["per_noun"]["cat"] == {"right": 0, "pairs": 1, "precision": 0.0}
    assert result["confusion"]["cat"] == {"dog": 1}
    assert result["curves"]["score"][0] == (1.0, 0.75)  # every scored pair at the lowest threshold


def test_the_synonym_table_names_coco_categories_once_each(tmp_path):
    table = load_synonyms()
    assert table["puppy"] == "dog" and table["motorbike"] == "motorcycle" and table["tv"] == "tv"
    assert len(set(table.values())) == 80
    conflicting = tmp_path / "synonyms.txt"
    conflicting.write_text("dog: puppy\ncat: puppy\n")
    with pytest.raises(ConfigError, match="'puppy' is listed under 'dog' and 'cat'"):
        load_synonyms(conflicting)


def test_the_command_writes_the_page_and_refuses_a_folder_that_is_not_a_corpus(coco_corpus, tmp_path, capsys):
    assert main(["report", str(coco_corpus), "--html", str(tmp_path / "page.html"), "--max-gallery", "2"]) == 0
    assert (tmp_path / "page.html").exists() and "page.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished corpus" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed (apt-get install -y chromium)")
def test_a_real_browser_renders_the_page_from_a_file_url(coco_corpus, tmp_path):
    page = build_report(ReportConfig(str(coco_corpus), html=str(tmp_path / "report.html"), max_gallery=3, top_nouns=2))
    screenshot = tmp_path / "screenshot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}", "--window-size=1200,2400",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1200)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text, plots and images drawn, not a blank page
