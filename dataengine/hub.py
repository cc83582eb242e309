"""Model hubs without a network: fail fast and quietly instead of retrying for a minute.

Where huggingface.co cannot be reached, Hugging Face downloads run in offline mode (the local
cache only), so a cached model loads at once and a missing one is one clear error.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from functools import lru_cache

NOISY_LOGGERS = ("huggingface_hub", "huggingface_hub.utils._http", "transformers", "root")


@lru_cache(maxsize=1)
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_access():
    """Offline mode when the hub is unreachable, and library chatter silenced, for the block."""
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    levels = {name: logging.getLogger(None if name == "root" else name).level for name in NOISY_LOGGERS}
    if not offline and not hub_reachable():
        constants.HF_HUB_OFFLINE = True
    for name in NOISY_LOGGERS:
        logging.getLogger(None if name == "root" else name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
        for name, level in levels.items():
            logging.getLogger(None if name == "root" else name).setLevel(level)
