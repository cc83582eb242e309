"""The controlled world, in one place: procedurally drawn scenes with exact ground truth
(`scenes`), its small CLIP with its trainer and competence check (`clip`, weights and config in
`data/`), and the loop that mines, trains and benchmarks in it (`loop`, what `dataengine demo` runs).

Nothing here is imported by `dataengine`: its CLIP's open_clip config reaches `dataengine` (and
every open_clip client) through the `dataengine.model_configs` entry point, `MODEL_CONFIG`.
"""

from pathlib import Path

MODEL_CONFIG = Path(__file__).parent / "data" / "dataengine-world.json"
