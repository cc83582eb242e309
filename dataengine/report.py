"""`dataengine report OUT`: one self-contained HTML page about a mined corpus.

The page holds a summary (counts, rejects by reason, models, settings, time per stage), plots
(matplotlib, embedded as PNG), a gallery of pairs (the source image with the mask's outline and
box, next to the 224x224 masked crop the model saw), and, where ground truth exists (COCO
instances, or the controlled world's), the pairs' precision. It has no external URL: images are
data URIs, and the one script (a filter of the gallery by noun) is inline. It opens offline.

Scale: the index is read a few columns at a time, and only the gallery's tar members are read
(by key, from the shard the index names). Ground truth decodes every pair's mask, so it costs
time in proportion to the corpus; without it, a 1M-pair corpus took 22 s and 1.3 GiB
(`python bench/bench_report.py`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

from .config import ConfigError
from .inspect import read_columns, read_json

log = logging.getLogger(__name__)
SUMMARY_COLUMNS = ["key", "shard", "image_key", "noun", "score", "margin", "area", "image_height", "image_width"]
GALLERY_COLUMNS = ["key", "shard", "image_id", "source", "image_height", "image_width", "noun", "score", "margin",
                   "box", "mask_counts", "caption"]
TRUTH_COLUMNS = ["key", "image_id", "image_height", "image_width", "noun", "score", "margin", "mask_counts"]
IOU_RIGHT = 0.5
SECTIONS = ("summary", "plots", "gallery", "ground-truth")


@dataclass
class ReportConfig:
    corpus: str
    html: str | None = None  # default: CORPUS/report.html
    instances: str | None = None  # COCO instances JSON; default: the corpus's own source.instances, if any
    max_gallery: int = 6  # pairs per gallery row
    top_nouns: int = 8  # gallery rows of the most frequent nouns
    noun: str | None = None  # the noun of the per-noun histograms; default: the most frequent
    seed: int = 0  # of the gallery's random samples

    def __post_init__(self):
        for name in ("max_gallery", "top_nouns"):
            if getattr(self, name) < 1:
                raise ConfigError(f"report: --{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


# ------------------------------------------------------------------ reading


class Corpus:
    """What the report reads of a finished corpus: the manifest, a few index columns, the rejects."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        if not manifest.exists():
            raise ConfigError(f"report: {self.folder} is not a finished corpus (no manifest.json)")
        self.manifest = read_json(manifest, "report")
        table = read_columns(self.folder / "index", SUMMARY_COLUMNS, "report")
        if table is None:
            raise ConfigError(f"report: {self.folder} has no index (no index/*.parquet)")
        self.pairs = table.to_pandas()
        rejects = read_columns(self.folder / "rejects", ["level", "reason"], "report")
        self.rejects = rejects.to_pandas() if rejects is not None else None

    def rows(self, keys: list[str], columns: list[str]) -> list[dict]:
        """The index rows of `keys`, in that order (a filtered scan: only matching rows are kept)."""
        if not keys:
            return []
        dataset = ds.dataset(str(self.folder / "index"), format="parquet")
        found = {row["key"]: row for row in dataset.to_table(columns=columns, filter=pc.field("key").isin(keys)).to_pylist()}
        return [found[key] for key in keys if key in found]

    def crops(self, rows: list[dict]) -> dict[str, bytes]:
        """KEY.jpg of each row, read from its own shard's tar only."""
        wanted: dict[int, set[str]] = defaultdict(set)
        for row in rows:
            wanted[row["shard"]].add(f"{row['key']}.jpg")
        found = {}
        for shard, names in wanted.items():
            path = self.folder / "shards" / f"pairs-{shard:06d}.tar"
            try:
                with tarfile.open(path) as tar:
                    for member in tar:
                        if member.name in names and member.isfile():
                            found[member.name[:-4]] = tar.extractfile(member).read()
                            names.discard(member.name)
                            if not names:  # this shard's members are all read: skip the rest of its tar
                                break
            except (OSError, tarfile.TarError) as error:
                log.warning("report: cannot read %s (%s): its pairs are shown without their crops", path, error)
        return found

    def iter_index(self, columns: list[str]):
        """The index one parquet file at a time (bounded memory)."""
        for path in sorted((self.folder / "index").glob("*.parquet")):
            yield ds.dataset(str(path), format="parquet").to_table(columns=columns).to_pylist()


# ------------------------------------------------------------------ plots


def _figure_png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _axes(title: str, width: float = 6.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width, height))
    axes.set_title(title, fontsize=10)
    return figure, axes


def plot_top_nouns(counts: Counter, top: int = 30) -> str:
    ranked = counts.most_common(top)
    figure, axes = _axes(f"top {len(ranked)} nouns", height=max(2.5, 0.18 * len(ranked)))
    axes.barh([noun for noun, _ in ranked][::-1], [count for _, count in ranked][::-1], color="#4878a8")
    axes.set_xlabel("pairs")
    axes.tick_params(axis="y", labelsize=7)
    return _figure_png(figure)


def plot_rank_frequency(curves: dict[str, Counter]) -> str:
    figure, axes = _axes("nouns by rank (the long tail)")
    for label, counts in curves.items():
        frequencies = sorted(counts.values(), reverse=True)
        axes.loglog(np.arange(1, len(frequencies) + 1), frequencies, label=label)
    axes.set_xlabel("rank")
    axes.set_ylabel("pairs")
    axes.legend(fontsize=8)
    return _figure_png(figure)


def plot_histograms(title: str, values: dict[str, np.ndarray], xlabel: str, bins=40, ylabel: str = "pairs") -> str:
    figure, axes = _axes(title)
    finite = [v[np.isfinite(v)] for v in values.values()]
    edges = np.histogram_bin_edges(np.concatenate(finite), bins=bins) if any(len(v) for v in finite) else bins
    for (label, _), data in zip(values.items(), finite, strict=True):
        axes.hist(data, bins=edges, alpha=0.6, label=f"{label} ({len(data)})", density=len(values) > 1)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("density" if len(values) > 1 else ylabel)
    axes.legend(fontsize=8)
    return _figure_png(figure)


def plot_bars(title: str, counts: dict[str, int], xlabel: str) -> str:
    figure, axes = _axes(title, height=max(2.0, 0.3 * len(counts) + 1))
    labels = list(counts)
    axes.barh(labels[::-1], [counts[label] for label in labels][::-1], color="#a85448")
    axes.set_xlabel(xlabel)
    axes.tick_params(axis="y", labelsize=8)
    return _figure_png(figure)


def plot_precision_yield(curves: dict[str, list[tuple[float, float]]]) -> str:
    figure, axes = _axes("precision against yield as a threshold rises")
    for label, points in curves.items():
        axes.plot([100 * y for y, _ in points], [100 * p for _, p in points], marker=".", label=label)
    axes.set_xlabel("pairs kept (%)")
    axes.set_ylabel("precision (%)")
    axes.invert_xaxis()
    axes.legend(fontsize=8)
    return _figure_png(figure)


# ------------------------------------------------------------------ ground truth


def load_synonyms(path=None) -> dict[str, str]:
    """noun -> COCO category from the package's table (`dataengine/data/coco_synonyms.txt`); each
    category's own name maps to itself. A noun listed under two categories is an error."""
    text = (Path(path).read_text() if path else files("dataengine").joinpath("data/coco_synonyms.txt").read_text())
    table: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        category, _, nouns = line.partition(":")
        for noun in [category.strip(), *(n.strip() for n in nouns.split(",") if n.strip())]:
            if table.get(noun, category.strip()) != category.strip():
                raise ConfigError(f"synonyms: {noun!r} is listed under {table[noun]!r} and {category.strip()!r}")
            table[noun] = category.strip()
    return table


class GroundTruth:
    """Instances of a COCO instances JSON by image id, and which category a caption noun names:
    the category of that name, else the synonym table's (a world's categories are its nouns)."""

    def __init__(self, instances_path: str | Path, synonyms: dict[str, str] | None = None):
        try:
            data = json.loads(Path(instances_path).read_text())
            names = {c["id"]: c["name"] for c in data["categories"]}
            images = {str(i["id"]) for i in data["images"]}
            annotations = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"report: --instances {instances_path} is not a COCO instances JSON "
                              f"({type(error).__name__}: {error})") from None
        self.categories = set(names.values())
        self.synonyms = {noun: c for noun, c in (synonyms if synonyms is not None else load_synonyms()).items()
                         if c in self.categories}
        self.by_image: dict[str, list[tuple[str, object]]] = defaultdict(list)
        for annotation in annotations:
            image = str(annotation["image_id"])
            if image in images and not annotation.get("iscrowd", 0):
                self.by_image[image].append((names[annotation["category_id"]], annotation["segmentation"]))
        self._rles: dict[str, list] = {}  # the instances' RLEs, computed once per image

    def category(self, noun: str) -> str | None:
        return noun if noun in self.categories else self.synonyms.get(noun)

    def judge(self, row: dict) -> tuple[str | None, str | None]:
        """(the noun's category or None, the category the pair's mask landed on at IoU >= 0.5, or None)."""
        from pycocotools import mask as mask_utils

        category = self.category(row["noun"])
        instances = self.by_image.get(str(row["image_id"]), [])
        if not instances:
            return category, None
        height, width = row["image_height"], row["image_width"]
        truths = self._rles.get(str(row["image_id"]))
        if truths is None:
            truths = self._rles[str(row["image_id"])] = [_instance_rle(s, height, width) for _, s in instances]
        pair = {"size": [height, width], "counts": row["mask_counts"].encode()}
        ious = mask_utils.iou([pair], truths, [0] * len(truths))[0]
        best = int(np.argmax(ious))
        landed = instances[best][0] if ious[best] >= IOU_RIGHT else None
        if category is not None and landed != category:  # right if any instance of its category overlaps
            same = [i for i, (name, _) in enumerate(instances) if name == category]
            if same and max(ious[i] for i in same) >= IOU_RIGHT:
                landed = category
        return category, landed


def _instance_rle(segmentation, height: int, width: int):
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": segmentation["size"], "counts": segmentation["counts"].encode()
            if isinstance(segmentation["counts"], str) else segmentation["counts"]}


def judge_corpus(corpus: Corpus, truth: GroundTruth) -> dict:
    """Per pair: (noun, score, margin, noun's category, landed category); then precision overall and
    per noun, precision against yield as score and margin thresholds rise, and the confusion."""
    judged = []
    for rows in corpus.iter_index(TRUTH_COLUMNS):
        for row in rows:
            category, landed = truth.judge(row)
            judged.append((row["noun"], row["score"], row["margin"], category, landed))
    return summarize_judgements(judged)


def summarize_judgements(judged: list[tuple]) -> dict:
    scored = [j for j in judged if j[3] is not None]
    right = [j[4] == j[3] for j in scored]
    per_noun: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    confusion: dict[str, Counter] = defaultdict(Counter)
    for (noun, _, _, _, landed), ok in zip(scored, right, strict=True):
        per_noun[noun][0] += int(ok)
        per_noun[noun][1] += 1
        confusion[noun][landed or "(no instance)"] += 1
    return {
        "pairs": len(judged), "scored_pairs": len(scored), "unscored_nouns": len(judged) - len(scored),
        "precision": _pct(sum(right), len(scored)),
        "precision_all_pairs": _pct(sum(right), len(judged)),  # nouns naming no category count as wrong
        "per_noun": {noun: {"right": r, "pairs": n, "precision": _pct(r, n)}
                     for noun, (r, n) in sorted(per_noun.items(), key=lambda item: -item[1][1])},
        "curves": {"score": _threshold_curve([j[1] for j in scored], right),
                   "margin": _threshold_curve([j[2] if j[2] is not None else np.inf for j in scored], right)},
        "confusion": {noun: dict(counts.most_common()) for noun, counts in confusion.items()},
    }


def _threshold_curve(values: list[float], right: list[bool], points: int = 20) -> list[tuple[float, float]]:
    """(yield, precision) of the pairs whose value is at or above each quantile threshold."""
    if not values:
        return []
    values, right = np.asarray(values, dtype=float), np.asarray(right, dtype=bool)
    finite = values[np.isfinite(values)]
    thresholds = np.quantile(finite, np.linspace(0, 0.95, points)) if len(finite) else [-np.inf]
    curve = []
    for threshold in thresholds:
        kept = values >= threshold
        if kept.any():
            curve.append((float(kept.mean()), float(right[kept].mean())))
    return curve


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


# ------------------------------------------------------------------ gallery


def gallery_selection(pairs, config: ReportConfig, top_nouns: list[str]) -> dict[str, list[str]]:
    """Gallery rows: title -> pair keys."""
    rng = np.random.default_rng(config.seed)
    size = config.max_gallery

    def sample(frame) -> list[str]:
        keys = frame.key.to_numpy()
        return sorted(rng.choice(keys, size=min(size, len(keys)), replace=False).tolist()) if len(keys) else []

    rows = {f"noun: {noun}": sample(pairs[pairs.noun == noun]) for noun in top_nouns}
    rows["a random sample"] = sample(pairs)
    rows["lowest scores"] = pairs.nsmallest(size, "score").key.tolist()
    with_margin = pairs[pairs.margin.notna()]
    rows["smallest margins"] = with_margin.nsmallest(size, "margin").key.tolist()
    return rows


def _source_view(row: dict, width: int = 320) -> str | None:
    """The source image with the pair's mask outline and box drawn, as a JPEG data URI; None when
    the source is not a readable image file in the frame the masks were drawn on."""
    from PIL import Image, ImageDraw, ImageOps
    from pycocotools import mask as mask_utils
    from scipy.ndimage import binary_dilation, binary_erosion

    path = Path(row["source"])
    try:
        if not path.is_file():
            return None
        with Image.open(path) as opened:
            image = opened.convert("RGB")
            size = (row["image_width"], row["image_height"])
            if image.size != size:
                image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if image.size != size:
        return None
    mask = mask_utils.decode({"size": [row["image_height"], row["image_width"]], "counts": row["mask_counts"].encode()})
    mask = mask.astype(bool)
    thickness = max(1, round(max(size) / 200))
    outline = binary_dilation(mask & ~binary_erosion(mask), iterations=thickness)
    pixels = np.asarray(image).copy()
    pixels[outline] = (255, 40, 200)
    drawn = Image.fromarray(pixels)
    x, y, w, h = row["box"]
    ImageDraw.Draw(drawn).rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 220, 0), width=thickness)
    drawn.thumbnail((width, width))
    return _jpeg_uri(drawn)


def _jpeg_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _card(row: dict, crop: bytes | None) -> str:
    source = _source_view(row)
    crop_uri = "data:image/jpeg;base64," + base64.b64encode(crop).decode("ascii") if crop else None
    margin = "-" if row["margin"] is None else f"{row['margin']:.3f}"
    images = "".join(f'<img src="{uri}" alt="{alt}">' for uri, alt in ((source, "source"), (crop_uri, "crop")) if uri)
    noun = html.escape(row["noun"])
    return (f'<figure class="card" data-noun="{noun}">{images or "<p>(no image)</p>"}'
            f'<figcaption><b>{noun}</b> score {row["score"]:.3f} margin {margin}<br>'
            f'<small>{html.escape(row["key"])}: {html.escape(row["caption"][:120])}</small></figcaption></figure>')


# ------------------------------------------------------------------ the page


def build_report(config: ReportConfig) -> Path:
    corpus = Corpus(config.corpus)
    out = Path(config.html) if config.html else corpus.folder / "report.html"
    pairs = corpus.pairs
    counts = Counter(pairs.noun.tolist())
    noun = config.noun or (counts.most_common(1)[0][0] if counts else None)
    if config.noun and config.noun not in counts:
        raise ConfigError(f"report: --noun {config.noun!r} has no pairs in {corpus.folder}")
    sections = {"summary": summary_section(corpus), "plots": plots_section(corpus, counts, noun),
                "gallery": gallery_section(corpus, config, [n for n, _ in counts.most_common(config.top_nouns)])}
    instances = config.instances or (corpus.manifest.get("source") or {}).get("instances")
    sections["ground-truth"] = truth_section(corpus, instances)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text(page(corpus, sections), encoding="utf-8")
    temporary.replace(out)
    return out


def summary_section(corpus: Corpus) -> str:
    manifest, pairs = corpus.manifest, corpus.pairs
    counts = manifest.get("counts", {})
    match = manifest.get("config", {}).get("match", {})
    rows = [("inputs (images)", counts.get("images")), ("images with pairs", counts.get("images_with_pairs")),
            ("pairs", len(pairs)), ("distinct nouns", pairs.noun.nunique()),
            ("rejected images", counts.get("rejected_images")), ("rejected nouns", counts.get("rejected_nouns")),
            ("wall time (s)", manifest.get("wall_seconds")), ("images/s", manifest.get("images_per_second")),
            ("pairs/s", manifest.get("pairs_per_second"))]
    models = manifest.get("models", {})
    settings = {key: match.get(key) for key in ("clip", "encoder", "min_score", "min_margin", "min_mentions",
                                                "mutual_best", "vocabulary", "one_to_one", "max_pairs_per_image")
                if key in match}
    settings["proposals"] = (manifest.get("config", {}).get("proposals") or {}).get("generator")
    if "filter" in manifest:
        settings["filter"] = manifest["filter"]
    stages = {name: stage.get("seconds") for name, stage in (manifest.get("stages") or {}).items()}
    rejects = _reject_counts(corpus)
    return (_table("counts", rows) + _table("models", list(models.items()))
            + _table("settings", [(k, json.dumps(v)) for k, v in settings.items()])
            + _table("time per stage (s, summed over workers)", list(stages.items()))
            + _table("rejects by reason", [(f"{level}: {reason}", n) for (level, reason), n in rejects.items()]
                     or [("none", 0)]))


def _reject_counts(corpus: Corpus) -> dict[tuple[str, str], int]:
    if corpus.rejects is None or corpus.rejects.empty:
        return {}
    grouped = corpus.rejects.groupby(["level", "reason"]).size().sort_values(ascending=False)
    return {key: int(n) for key, n in grouped.items()}


def plots_section(corpus: Corpus, counts: Counter, noun: str | None) -> str:
    pairs = corpus.pairs
    if pairs.empty:
        return "<p>No pairs.</p>"
    curves = {"this corpus": counts}
    source = (corpus.manifest.get("filter") or {}).get("corpus")
    if source and (Path(source) / "index").is_dir():
        before = read_columns(Path(source) / "index", ["noun"], "report")
        if before is not None:
            curves = {"before the filter": Counter(before["noun"].to_pylist()), "after": counts}
    scores, margins = pairs.score.to_numpy(float), pairs.margin.to_numpy(float, na_value=np.nan)
    chosen = (pairs.noun == noun).to_numpy()
    per_image = pairs.groupby("image_key").size().to_numpy()
    area = (pairs.area / (pairs.image_height * pairs.image_width)).to_numpy(float)
    plots = [("noun frequency", plot_top_nouns(counts)), ("rank-frequency", plot_rank_frequency(curves)),
             ("scores", plot_histograms("score (cosine)", {"all": scores, noun: scores[chosen]}, "score")),
             ("margins", plot_histograms("margin (best - second best)", {"all": margins, noun: margins[chosen]},
                                         "margin")),
             ("pairs per image", plot_histograms("pairs per image", {"images": per_image}, "pairs",
                                                 bins=np.arange(0.5, per_image.max() + 1.5), ylabel="images")),
             ("mask area", plot_histograms("mask area / image area", {"pairs": area}, "share of the image"))]
    rejects = _reject_counts(corpus)
    if rejects:
        plots.append(("reject reasons", plot_bars("rejects by reason", {f"{lv}: {r}": n for (lv, r), n in rejects.items()},
                                                  "rejects")))
    return "".join(_plot(title, png) for title, png in plots)


def gallery_section(corpus: Corpus, config: ReportConfig, top_nouns: list[str]) -> str:
    selection = gallery_selection(corpus.pairs, config, top_nouns)
    keys = list(dict.fromkeys(key for row in selection.values() for key in row))
    rows = {row["key"]: row for row in corpus.rows(keys, GALLERY_COLUMNS)}
    crops = corpus.crops(list(rows.values()))
    parts = ['<p><label>filter by noun: <input id="noun-filter" type="search" placeholder="noun"></label></p>']
    for title, chosen in selection.items():
        cards = "".join(_card(rows[key], crops.get(key)) for key in chosen if key in rows)
        parts.append(f'<h3>{html.escape(title)}</h3><div class="row">{cards}</div>')
    return "".join(parts)


def truth_section(corpus: Corpus, instances: str | None) -> str:
    if not instances:
        return "<p>No ground truth: pass --instances (a COCO instances JSON) to measure precision.</p>"
    if not Path(instances).is_file():
        raise ConfigError(f"report: --instances: no such file {instances}")
    result = judge_corpus(corpus, GroundTruth(instances))
    per_noun = [(noun, f"{v['precision']}% of {v['pairs']}") for noun, v in list(result["per_noun"].items())[:40]]
    confusion = [(noun, ", ".join(f"{html.escape(c)} {n}" for c, n in list(landed.items())[:4]))
                 for noun, landed in list(result["confusion"].items())[:25]]
    curves = {name: points for name, points in result["curves"].items() if points}
    return (f"<p>A pair is right when its mask overlaps an instance of the noun's category at IoU &ge; {IOU_RIGHT} "
            f"(ground truth: {html.escape(str(instances))}). Nouns that name no category are not scored.</p>"
            + _table("precision", [("pairs", result["pairs"]), ("scored pairs", result["scored_pairs"]),
                                   ("pairs of nouns naming no category", result["unscored_nouns"]),
                                   ("precision (%)", result["precision"]),
                                   ("precision over all pairs (%), nouns naming no category counted wrong",
                                    result["precision_all_pairs"])])
            + (_plot("precision against yield", plot_precision_yield(curves)) if curves else "")
            + _table("precision per noun", per_noun)
            + _table("confusion: where each noun's masks landed (category of the overlapping instance)", confusion,
                     escape=False))


def _table(title: str, rows, escape: bool = True) -> str:
    def cell(value) -> str:
        return html.escape(str(value)) if escape else str(value)

    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in rows)
    return f'<table><caption>{html.escape(title)}</caption>{body}</table>'


def _plot(title: str, png: str) -> str:
    return (f'<figure class="plot"><img src="data:image/png;base64,{png}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;margin:.5em 1em 1em 0;
display:inline-table;vertical-align:top}th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;font-size:13px}
caption{font-weight:bold;text-align:left}.plot{display:inline-block;margin:.5em}.row{display:flex;flex-wrap:wrap}
.card{margin:.4em;border:1px solid #ddd;padding:4px;width:330px}.card img{height:160px;margin-right:4px}
figcaption{font-size:12px}"""
SCRIPT = """document.getElementById('noun-filter').addEventListener('input', function (event) {
  var wanted = event.target.value.trim().toLowerCase();
  document.querySelectorAll('.card').forEach(function (card) {
    card.style.display = !wanted || card.dataset.noun.indexOf(wanted) >= 0 ? '' : 'none';
  });
});"""


def page(corpus: Corpus, sections: dict[str, str]) -> str:
    titles = {"summary": "Summary", "plots": "Plots", "gallery": "Gallery", "ground-truth": "Ground truth"}
    body = "".join(f'<section id="{name}"><h2>{titles[name]}</h2>{sections[name]}</section>' for name in SECTIONS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>dataengine report: '
            f'{html.escape(str(corpus.folder))}</title><style>{STYLE}</style></head><body>'
            f'<h1>dataengine report: {html.escape(str(corpus.folder))}</h1>{body}<script>{SCRIPT}</script></body></html>')
