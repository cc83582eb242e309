"""`dataengine export-clip`: write any `--clip` spec (or a finetune output's weights) as an open_clip
`local-dir:` folder, so that open_clip's own tools, `open_clip_train` included, load it unchanged:

    OUT/open_clip_config.json   {"model_cfg": ..., "preprocess_cfg": ...} (open_clip's hub format)
    OUT/open_clip_model.safetensors

Mask prompts (an MPT run's `prompts.pt`) are not part of an open_clip model: they need this package's
wrapper, so an export carries the CLIP weights only and says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .clip import load_clip
from .config import ConfigError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
log = logging.getLogger(__name__)


def export_open_clip(spec: str, out: str | Path) -> Path:
    """Write the model `spec` (NAME[@PRETRAINED_OR_PATH]) as a local-dir folder; returns the folder."""
    import open_clip
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out: {out} exists and is not an empty folder")
    clip = load_clip(spec)
    model_config = open_clip.get_model_config(clip.architecture)
    if model_config is None:
        raise ConfigError(f"--clip: open_clip has no config for {clip.architecture!r} to export")
    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in clip.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "exported_from": spec})
    save_config_for_hf(clip.model, out / CONFIG_FILE, model_config)
    log.info("exported %s to local-dir:%s", spec, out)
    return out


def describe_export(out: Path) -> str:
    config = json.loads((out / CONFIG_FILE).read_text())
    vision = config["model_cfg"].get("vision_cfg", {})
    return (f"wrote local-dir:{out} (open_clip config + {WEIGHTS_FILE}, image size {vision.get('image_size')}); "
            f"use it as --model local-dir:{out} in open_clip_train or --clip local-dir:{out} here")
