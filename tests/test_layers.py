"""The package's layers: `dataengine` never imports `finetune` (finetune registers its subcommands
through the `dataengine.commands` entry point), and only `dataengine/executors/` imports Ray, with
`finetune/ray_train.py` for training (Ray Train's workers)."""

from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth of the file (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_dataengine_never_imports_finetune():
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "dataengine").rglob("*.py")
                 if "finetune" in imported_modules(path)]
    assert not offenders, f"dataengine imports finetune in {offenders} (register a command instead)"


def test_only_the_executors_and_the_ray_trainer_import_ray():
    executors, trainer = ROOT / "dataengine" / "executors", ROOT / "finetune" / "ray_train.py"
    offenders = [str(path.relative_to(ROOT)) for folder in ("dataengine", "finetune") for path in (ROOT / folder).rglob("*.py")
                 if executors not in path.parents and path != trainer and "ray" in imported_modules(path)]
    assert not offenders, f"Ray imported outside dataengine/executors/ and finetune/ray_train.py: {offenders}"


def test_finetune_commands_are_registered_through_the_entry_point():
    from dataengine.cli import COMMANDS_GROUP, build_parser

    assert "finetune.cli:register" in {entry.value for entry in entry_points(group=COMMANDS_GROUP)}
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"mine", "inspect", "demo", "export-clip", "finetune", "bench"} <= set(commands)


def test_the_world_model_config_is_registered_through_its_entry_point():
    import open_clip

    import dataengine  # noqa: F401  (registers the package's model configs)

    assert {"dataengine-world"} <= {entry.name for entry in entry_points(group="dataengine.model_configs")}
    assert "dataengine-world" in open_clip.list_models()


def layout_folders() -> list[str]:
    """The folders the README's layout block names, as paths (indentation gives the parent)."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Layout"):].split("```")[1]
    folders, parents = [], []
    for line in block.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.endswith("/"):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        parents = parents[:depth] + [name.rstrip("/")]
        folders.append("/".join(parents))
    return folders


def test_the_readme_layout_matches_the_tree():
    listed = set(layout_folders())
    assert all((ROOT / folder).is_dir() for folder in listed), sorted(f for f in listed if not (ROOT / f).is_dir())
    packages = {str(path.parent.relative_to(ROOT)) for folder in ("dataengine", "finetune")
                for path in (ROOT / folder).rglob("__init__.py")}
    data_folders = {str(path.relative_to(ROOT)) for folder in ("dataengine", "finetune")
                    for path in (ROOT / folder).rglob("data") if path.is_dir()}
    missing = sorted(folder for folder in packages | data_folders
                     if not any(shown == folder or shown.startswith(folder + "/") for shown in listed))
    assert not missing, f"folders missing from the README's layout: {missing}"


def all_registries():
    from dataengine.executors import EXECUTORS
    from dataengine.proposals import GENERATORS
    from dataengine.sources import SOURCES
    from finetune.config import LOSSES, PHASES
    from finetune.datasets import DATASETS

    return [SOURCES, GENERATORS, EXECUTORS, DATASETS, PHASES, LOSSES]


def test_every_pluggable_kind_is_one_registry_whose_names_resolve():
    import pytest

    for registry in all_registries():
        for name in registry:
            assert callable(registry.get(name)), (registry.kind, name)
        with pytest.raises(registry.error, match=rf"^{registry.flag}: unknown {registry.kind} 'nope' \(available: "):
            registry.get("nope")
    dataengine_targets = [target for registry in all_registries()[:3] for target in registry._targets.values()]
    assert all(target.startswith("dataengine.") for target in dataengine_targets), dataengine_targets


def test_stages_declare_their_placement_and_executors_split_one_list():
    import pytest

    from dataengine.config import MineConfig
    from dataengine.stage import CPU_TASK, MODEL_ACTOR, Stage, split_by_placement
    from dataengine.stages import build_stages

    stages = build_stages(MineConfig(), "cpu")  # classical proposals: CPU work, beside the reader
    assert [(s.name, s.placement, s.loads_model) for s in stages] == [
        ("nouns", CPU_TASK, False), ("decode", CPU_TASK, False), ("proposals", CPU_TASK, False),
        ("match", MODEL_ACTOR, True)]
    cpu, model = split_by_placement(stages)
    assert [s.name for s in cpu] == ["nouns", "decode", "proposals"] and [s.name for s in model] == ["match"]
    from dataengine.config import ProposalConfig

    learned = build_stages(MineConfig(proposals=ProposalConfig(generator="hf:/no/such/model")), "cpu")
    assert [s.name for s in split_by_placement(learned)[1]] == ["proposals", "match"]  # nothing loaded yet
    assert learned[2].generator is None
    with pytest.raises(ValueError, match="a CPU stage after a model stage"):
        split_by_placement([stages[3], Stage()])
