"""Benchmark datasets in their standard layouts, every protocol end to end, several models side by side,
the ensemble, protocol settings and --compare, and oracle tests of the painting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.datasets import DATASETS, IGNORE, DatasetError, open_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLES = {"ade20k-150": SHARED / "ade20k-mini", "voc": SHARED / "voc-mini", "coco-object": SHARED / "coco-val-mini"}


def shared(name: str) -> Path:
    if not SAMPLES[name].exists():
        pytest.skip(f"shared test data not found at {SAMPLES[name]}")
    return SAMPLES[name]


def test_class_lists_have_their_sizes():
    sizes = {"ade20k-150": 150, "ade20k-847": 847, "pc-59": 59, "pc-459": 459, "voc": 20, "coco-object": 80}
    from finetune.datasets import class_names

    for name, size in sizes.items():
        assert len(class_names(DATASETS.get(name).classes_file)) == size


@pytest.mark.parametrize("name", list(SAMPLES))
def test_shared_samples_read_through_the_full_dataset_loaders(name):
    dataset = open_dataset(name, shared(name))
    expected = {"ade20k-150": 3, "voc": 14, "coco-object": 127}[name]
    assert len(dataset) == expected
    for sample in list(dataset)[:3]:
        assert sample.image.dtype == np.uint8 and sample.image.shape[:2] == sample.labels.shape
        valid = sample.labels[sample.labels != IGNORE]
        assert valid.size and valid.min() >= 0 and valid.max() < len(dataset.classes)
    if name == "voc":  # background (0) and borders (255) are ignored; classes shift down by one
        with Image.open(shared(name) / "SegmentationClass" / f"{dataset.items[0][0]}.png") as image:
            raw = np.asarray(image)
        labels = next(iter(dataset)).labels
        assert ((raw == 0) | (raw == 255)).sum() == (labels == IGNORE).sum()
        assert np.array_equal(labels[(raw > 0) & (raw < 255)], raw[(raw > 0) & (raw < 255)] - 1)


def _write_layout(root: Path, images_dir: str, labels_dir: str, ext: str, labels: np.ndarray, mode: str):
    (root / images_dir).mkdir(parents=True)
    (root / labels_dir).mkdir(parents=True)
    Image.new("RGB", labels.shape[::-1], (90, 140, 200)).save(root / images_dir / "img_0001.jpg")
    Image.fromarray(labels.astype(np.uint16 if mode == "I;16" else np.uint8)).save(root / labels_dir / f"img_0001{ext}")


@pytest.mark.parametrize("name,images_dir,labels_dir,ext,ignore", [
    ("ade20k-847", "images_detectron2/validation", "annotations_detectron2/validation", ".tif", 65535),
    ("pc-459", "JPEGImages", "annotations_detectron2/pc459_val", ".tif", 65535),
    ("pc-59", "JPEGImages", "annotations_detectron2/pc59_val", ".png", 255),
])
def test_detectron2_prepared_layouts(tmp_path, name, images_dir, labels_dir, ext, ignore):
    labels = np.array([[0, 5, ignore], [ignore, 58, 0]])
    _write_layout(tmp_path, images_dir, labels_dir, ext, labels, "I;16" if ext == ".tif" else "L")
    sample = next(iter(open_dataset(name, tmp_path)))
    assert sample.labels.tolist() == [[0, 5, IGNORE], [IGNORE, 58, 0]]


def test_wrong_roots_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="ade20k-150 root"):
        open_dataset("ade20k-150", tmp_path)
    with pytest.raises(DatasetError, match="val.txt"):
        open_dataset("voc", tmp_path)
    with pytest.raises(DatasetError, match="unknown"):
        open_dataset("cityscapes", tmp_path)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A short ft+mpt run of the tiny CLIP on synthetic pairs: a folder with model.pt and prompts.pt."""
    from pairs import write_pair_shards

    from finetune.config import TrainConfig
    from finetune.train import train

    root = tmp_path_factory.mktemp("run")
    shards = write_pair_shards(root / "shards", pairs=16, per_shard=16)
    train(TrainConfig(shards=shards, out=str(root / "run"), clip="dataengine-tiny", mode="ft+mpt", epochs=1,
                      batch_size=8, workers=0, prompt_depth=2, progress=False, ft_lr=1e-3))
    return root / "run"


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("protocol", ["gt-masks", "two-stage", "two-stage-binary"])
def test_every_protocol_end_to_end_with_models_side_by_side(name, protocol, trained_run, tmp_path, capsys):
    from dataengine.cli import main

    out = tmp_path / "result.json"
    args = ["bench", "--dataset", name, "--root", str(shared(name)), "--protocol", protocol, "--limit", "2",
            "--clip", "dataengine-tiny", "--model", f"trained={trained_run}", "--device", "cpu", "--out", str(out),
            "--no-progress"]
    if protocol != "gt-masks":
        args += ["--proposals", "classical"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    settings = report["settings"]
    assert settings["protocol"] == protocol and settings["dataset"] == name
    assert settings["test_size"] == (None if protocol == "gt-masks" else [640, 2560])  # the method's test resizing
    assert settings["proposals"] == (None if protocol == "gt-masks" else "classical")
    assert report["images"] == 2 and report["regions"] > 0 and set(report["models"]) == {"clip", "trained"}
    assert report["models"]["trained"]["prompts"] and not report["models"]["clip"]["prompts"]
    for result in report["models"].values():
        assert 0 <= result["mIoU"] <= 100 and 0 <= result["pixel_accuracy"] <= 100
        if protocol == "gt-masks":
            assert 0 <= result["region_accuracy"] <= 100
    table = capsys.readouterr().out
    assert "trained" in table and "mIoU" in table


def test_python_module_entry_and_bad_arguments(tmp_path, capsys):
    from finetune.cli import bench_main

    assert bench_main(["--dataset", "voc", "--root", str(tmp_path / "missing"), "--clip", "dataengine-tiny",
                       "--out", str(tmp_path / "r.json")]) == 2
    assert bench_main(["--dataset", "voc", "--root", str(tmp_path), "--model", "no-equals-sign",
                       "--out", str(tmp_path / "r.json")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_generator_labels_map_onto_benchmark_classes_and_ensemble():
    import torch

    from dataengine.records import Proposals
    from finetune.benchmark import ensemble_with_generator, generator_columns, generator_distribution

    columns = generator_columns(("person", "dog", "sky-other-merged", "Bus"), ["bus", "sky", "cat", "person"])
    assert columns == [3, 2, None, 0]
    proposals = Proposals([{}], [0.9], "hf-maskformer", class_probs=np.array([[0.1, 0.2, 0.3, 0.4]]),
                          class_labels=("person", "dog", "sky-other-merged", "Bus"))
    p_clip = torch.tensor([[0.25, 0.25, 0.4, 0.1]])
    # the generator on the benchmark's classes: bus 0.4, sky 0.3, person 0.1; "dog" (0.2) names no
    # benchmark class, so its mass goes to the one class the generator does not name, "cat"
    p_gen = generator_distribution(proposals.class_probs, columns)
    assert p_gen[0].tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1])
    mixed = ensemble_with_generator(p_clip, proposals.class_probs, columns, 0.6)
    raw = torch.tensor([0.4, 0.3, 0.2, 0.1]) ** 0.4 * p_clip[0] ** 0.6
    assert mixed[0].tolist() == pytest.approx((raw / raw.sum()).tolist())
    assert mixed.sum().item() == pytest.approx(1.0)


def test_the_ensemble_at_weight_0_is_the_generator_and_at_1_is_clip_on_every_class():
    import torch

    from dataengine.records import Proposals
    from finetune.benchmark import ensemble_with_generator, generator_columns, generator_distribution

    labels = ("person", "dog", "sky-other-merged", "Bus", "tree")
    columns = generator_columns(labels, ["bus", "sky", "cat", "person", "road"])
    rng = np.random.default_rng(0)
    generator = rng.dirichlet(np.ones(len(labels)), size=6)
    proposals = Proposals([{}] * 6, [0.9] * 6, "hf-maskformer", class_probs=generator, class_labels=labels)
    p_clip = torch.from_numpy(rng.dirichlet(np.ones(5), size=6)).float()
    assert torch.allclose(ensemble_with_generator(p_clip, proposals.class_probs, columns, 0.0),
                          generator_distribution(generator, columns), atol=1e-6)
    assert torch.allclose(ensemble_with_generator(p_clip, proposals.class_probs, columns, 1.0), p_clip, atol=1e-6)
    every = generator_distribution(generator[:, [3, 2, 0]], [0, 1, 2])  # a generator that names every class
    assert torch.allclose(every.sum(1), torch.ones(6)) and torch.allclose(
        every, torch.from_numpy(generator[:, [3, 2, 0]] / generator[:, [3, 2, 0]].sum(1, keepdims=True)).float())


def test_the_released_ensemble_weighs_a_likely_no_object_query_less_and_renormalizes_nothing():
    import torch

    from finetune.benchmark import ensemble_as_released, paint

    columns = [0, 1]  # a generator that names both classes
    # softmax over (class 0, class 1, no-object) with no-object dropped, as ov-seg keeps it
    class_probs = np.array([[0.08, 0.02, 0.9],   # query A: likely no-object, says class 0
                            [0.1, 0.7, 0.2]])[:, :2]
    p_clip = torch.tensor([[0.6, 0.4], [0.4, 0.6]])
    mixed = ensemble_as_released(p_clip, class_probs, columns, 0.5)
    expected = np.sqrt(class_probs) * np.sqrt(p_clip.numpy())
    assert mixed.numpy() == pytest.approx(expected, abs=1e-6)
    assert mixed.sum(1)[0] < mixed.sum(1)[1] < 1  # nothing renormalized
    # the two queries overlap fully: the no-object-heavy query A loses the pixel to B
    masks = torch.ones((2, 1, 1))
    assert paint(masks, mixed)[0, 0] == 1
    # weight 1: CLIP alone; weight 0: the generator's probabilities as they are, not renormalized
    assert torch.allclose(ensemble_as_released(p_clip, class_probs, columns, 1.0), p_clip, atol=1e-6)
    assert ensemble_as_released(p_clip, class_probs, columns, 0.0).numpy() == pytest.approx(class_probs, abs=1e-6)
    # a query CLIP did not classify (empty binary mask) keeps p_clip = 1, as the released code fills it
    unclassified = ensemble_as_released(torch.ones((1, 2)), class_probs[:1], columns, 0.7)
    assert unclassified.numpy() == pytest.approx(class_probs[:1] ** 0.3, abs=1e-6)


def test_the_released_ensemble_form_end_to_end_and_recorded(maskformer_dir, tmp_path, capsys):
    from dataengine.cli import main

    base = ["bench", "--dataset", "voc", "--root", str(shared("voc")), "--limit", "2", "--clip", "dataengine-tiny",
            "--device", "cpu", "--no-progress", "--proposals", f"hf:{maskformer_dir}", "--ensemble-lambda", "method"]
    reports = {}
    for form in ("renormalized", "released"):
        out = tmp_path / f"{form}.json"
        assert main([*base, "--protocol", "two-stage", "--ensemble-form", form, "--out", str(out)]) == 0
        reports[form] = json.loads(out.read_text())
        assert reports[form]["settings"]["ensemble_form"] == form
    # the released form keeps queries whose binary mask is empty: they still paint
    assert reports["released"]["regions"] >= reports["renormalized"]["regions"]
    capsys.readouterr()
    assert main(["bench", "--compare", str(tmp_path / "renormalized.json"), str(tmp_path / "released.json")]) == 2
    assert 'ensemble_form: "renormalized" vs "released"' in capsys.readouterr().err
    # the released form needs the method's two-stage (soft masks and no-object probabilities)
    assert main([*base, "--protocol", "two-stage-binary", "--ensemble-form", "released",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "needs --protocol two-stage" in capsys.readouterr().err


def test_two_stage_with_a_learned_generator_and_its_ensemble(maskformer_dir, tmp_path):
    from dataengine.cli import main

    base = ["bench", "--dataset", "voc", "--root", str(shared("voc")), "--protocol", "two-stage", "--limit", "2",
            "--clip", "dataengine-tiny", "--device", "cpu", "--no-progress"]
    out = tmp_path / "ensemble.json"
    assert main([*base, "--proposals", f"hf:{maskformer_dir}", "--ensemble-lambda", "0.6", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ensemble_lambda"] == 0.6 and report["images"] == 2
    # classical proposals have no class scores to ensemble with: a clear error, before any work
    assert main([*base, "--proposals", "classical", "--ensemble-lambda", "0.6", "--out", str(tmp_path / "x.json")]) == 2
    preset = tmp_path / "preset.json"
    assert main([*base, "--proposals", f"hf:{maskformer_dir}", "--ensemble-lambda", "method", "--out", str(preset)]) == 0
    assert json.loads(preset.read_text())["settings"]["ensemble_lambda"] == 0.45  # the method's weight for VOC


def test_the_method_ensemble_preset_is_refused_where_the_method_publishes_none(tmp_path, capsys):
    from dataengine.cli import main

    assert main(["bench", "--dataset", "coco-object", "--root", str(tmp_path), "--ensemble-lambda", "method",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "publishes no ensemble weight for coco-object" in capsys.readouterr().err


def test_compare_refuses_reports_of_different_protocols(tmp_path, capsys):
    from dataengine.cli import main

    base = ["bench", "--dataset", "voc", "--root", str(shared("voc")), "--limit", "2", "--clip", "dataengine-tiny",
            "--device", "cpu", "--no-progress"]
    first, second, third = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    assert main([*base, "--out", str(first)]) == 0
    assert main([*base, "--out", str(second), "--seed", "1"]) == 0  # another model, same protocol
    assert main([*base, "--out", str(third), "--encoder", "single-pass"]) == 0
    capsys.readouterr()
    assert main(["bench", "--compare", str(first), str(second)]) == 0
    table = capsys.readouterr().out
    assert "a.json" in table and "b.json" in table and "WARNING" not in table
    assert main(["bench", "--compare", str(first), str(third)]) == 2
    assert 'encoder: "crops" vs "single-pass"' in capsys.readouterr().err
    assert main(["bench", "--compare", str(first), str(third), "--allow-mismatch"]) == 0
    assert "WARNING: different protocols" in capsys.readouterr().out
    assert main(["bench", "--dataset", "voc", "--out", str(tmp_path / "x.json")]) == 2
    assert "--root is required (unless --compare)" in capsys.readouterr().err


def test_maskformer_proposals_carry_class_probabilities(maskformer_dir):
    from dataengine.config import ProposalConfig
    from dataengine.proposals import create_generator
    from dataengine.records import Sample

    generator = create_generator(f"hf:{maskformer_dir}", ProposalConfig())
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    sample = Sample(key="k", image_id="k", source="s", captions=[], image=image, height=60, width=80)
    proposals = generator.generate(sample)
    assert proposals.class_labels == ("person", "dog", "car", "sky-other-merged", "bus")
    assert proposals.class_probs.shape == (len(proposals), 5)
    assert np.allclose(proposals.class_probs.sum(1), 1.0)
    kept = proposals.filter(np.arange(len(proposals))[::2])
    assert np.array_equal(kept.class_probs, proposals.class_probs[::2])


def oracle_labels() -> np.ndarray:
    """A 4x6 label map: class 0 left, class 1 top right, class 2 bottom right, one ignored pixel (IGNORE)."""
    labels = np.zeros((4, 6), dtype=np.int64)
    labels[:2, 3:] = 1
    labels[2:, 3:] = 2
    labels[0, 0] = IGNORE
    return labels


def two_stage_miou(masks, probabilities, labels, classes=3) -> dict:
    import torch

    from finetune.benchmark import paint
    from finetune.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(classes)
    matrix.update(paint(torch.as_tensor(masks), torch.as_tensor(probabilities, dtype=torch.float32)), labels)
    return matrix.results()


def test_oracle_ground_truth_masks_and_a_classifier_always_right_give_miou_100():
    labels = oracle_labels()
    masks = np.stack([labels == c for c in range(3)])
    assert two_stage_miou(masks, np.eye(3), labels)["mIoU"] == 100.0


def test_oracle_a_classifier_that_always_answers_one_class_matches_a_hand_computation():
    labels = oracle_labels()
    masks = np.stack([labels == c for c in range(3)])
    always_zero = np.tile([[0.9, 0.05, 0.05]], (3, 1))
    result = two_stage_miou(masks, always_zero, labels)
    # 23 labelled pixels, all predicted 0: class 0 has 11 pixels, so IoU 11/23; classes 1 and 2: 0
    assert result["mIoU"] == pytest.approx(100 * (11 / 23) / 3, abs=1e-2)
    assert result["pixel_accuracy"] == pytest.approx(100 * 11 / 23, abs=1e-2)


def test_oracle_soft_masks_of_known_values_paint_a_hand_worked_map():
    import torch

    from finetune.benchmark import paint

    # two queries over a 1x3 image: query A (class 0 for sure) with mask values 0.9, 0.5, 0.0;
    # query B (70% class 1, 30% class 0) with 0.2, 0.6, 0.0.
    # pixel 0: class 0 = 0.9 + 0.2*0.3 = 0.96, class 1 = 0.14 -> 0
    # pixel 1: class 0 = 0.5 + 0.6*0.3 = 0.68, class 1 = 0.42 -> 0
    masks = torch.tensor([[[0.9, 0.5, 0.0]], [[0.2, 0.6, 0.0]]])
    probabilities = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    assert paint(masks, probabilities).tolist() == [[0, 0, -1]]  # pixel 2: no mass at all, a miss
    # a stronger B: mask 0.9 on pixel 1 -> class 0 = 0.5 + 0.27 = 0.77, class 1 = 0.63 -> still 0;
    # B certain of class 1 -> class 0 = 0.5, class 1 = 0.9 -> 1
    masks[1, 0, 1] = 0.9
    assert paint(masks, torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist() == [[0, 1, -1]]


def test_the_method_region_preprocessing_differs_from_the_engine_only_by_rounding_and_antialiasing():
    import torch

    from dataengine.regions import normalize
    from finetune.benchmark import method_region_crops, region_crops

    rows, cols = np.mgrid[0:60, 0:80]
    image = np.stack([2 * rows + 40, 2 * cols + 30, rows + cols + 50], -1).astype(np.uint8)  # smooth: no overshoot
    masks = torch.zeros((2, 60, 80), dtype=torch.bool)
    masks[0] = torch.from_numpy((rows - 25) ** 2 + (cols - 35) ** 2 < 15**2)  # a disc; both upscaled to 224:
    # antialiasing does nothing
    masks[1, 5:55, 5:75] = True
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    fill = tuple(255 * m for m in mean)
    engine, engine_masks = region_crops(image, masks, 224, fill, "cpu", 8)
    method, method_masks = method_region_crops(image, masks, 224, mean, std, "cpu")
    assert method.shape == (2, 3, 224, 224) and method.dtype == torch.float32
    # both nearest, but torch's picks floor(i * scale), PIL's floor((i + 0.5) * scale): edges move a little
    assert (method_masks == engine_masks).float().mean() > 0.95
    difference = (method - normalize(engine, mean, std)).abs()
    # upscaled: only 8-bit rounding differs, and the clamping of bicubic overshoot at the mask edge
    assert difference.mean() < 0.01 and difference.max() < 0.1
    assert method[0][:, :12, :12].abs().max() < 1e-6  # the corner of the disc's box: 0, the normalized mean


def test_bench_records_its_region_preprocessing(tmp_path):
    from dataengine.cli import main

    out = tmp_path / "method.json"
    assert main(["bench", "--dataset", "voc", "--root", str(shared("voc")), "--limit", "1", "--clip", "dataengine-tiny",
                 "--device", "cpu", "--no-progress", "--region-preprocessing", "method", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["settings"]["region_preprocessing"] == "method"


def test_test_time_resizing_follows_the_shortest_edge_rule():
    from finetune.benchmark import resize_shortest_edge

    assert resize_shortest_edge(np.zeros((480, 640, 3), np.uint8), 640, 2560).shape == (640, 853, 3)
    assert resize_shortest_edge(np.zeros((100, 1000, 3), np.uint8), 640, 2560).shape == (256, 2560, 3)  # capped
    image = np.zeros((640, 700, 3), np.uint8)
    assert resize_shortest_edge(image, 640, 2560) is image  # already the size: untouched


def test_the_methods_two_stage_uses_every_query_of_a_maskformer(maskformer_dir, tmp_path):
    from dataengine.cli import main

    base = ["bench", "--dataset", "voc", "--root", str(shared("voc")), "--limit", "1", "--clip", "dataengine-tiny",
            "--device", "cpu", "--no-progress", "--proposals", f"hf:{maskformer_dir}"]
    regions = {}
    for protocol in ("two-stage", "two-stage-binary"):
        out = tmp_path / f"{protocol}.json"
        assert main([*base, "--protocol", protocol, "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        regions[protocol] = report["regions"]
        assert report["settings"]["masks"].startswith("a MaskFormer's" if protocol == "two-stage" else "the generator's")
        assert report["settings"]["mask_threshold"] == 0.4
    assert regions["two-stage"] >= regions["two-stage-binary"]  # no score threshold, no area filter, no NMS


def test_an_image_without_proposals_paints_nothing_at_the_labels_size():
    import torch

    from finetune.benchmark import Regions, paint

    regions = Regions(np.zeros((640, 853, 3), np.uint8), torch.zeros((0, 640, 853), dtype=torch.bool))
    painted = regions.painted((480, 640))
    assert painted.shape == (0, 480, 640)
    assert (paint(painted, torch.zeros((0, 3))) == -1).all()


def test_the_generator_distribution_is_a_distribution_for_any_generator_output():
    from finetune.benchmark import generator_distribution

    columns = [0, 1, None]
    assert generator_distribution(np.array([[0.3, 0.3, 0.0]]), columns)[0].tolist() == pytest.approx([0.5, 0.5, 0.0])
    outside = generator_distribution(np.array([[0.0, 0.0, 1.0]]), [0, 1])  # all mass on a non-benchmark label
    assert outside[0].tolist() == pytest.approx([0.5, 0.5])
