"""The output folder of a run: one writer at a time (a lock), and resumption of an interrupted run.

`run.json` records the fingerprint of the job (every setting that shapes the output, the models
and the package version). A rerun with the same fingerprint resumes: shards whose
`stats/%06d.json` exists are done and skipped, the others are cleaned and redone. A rerun with a
different fingerprint is refused unless `--overwrite`, which starts the folder afresh. A folder
with no finished shard is simply reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

from .config import ConfigError, MineConfig
from .write import SHARD_INDEX, SHARD_REJECTS, SHARD_STATS, SHARD_TAR, TMP_DIR

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
# Cleared in this order: the done markers first and run.json last, so that a run killed while
# clearing leaves a folder whose rerun clears it again, never one that looks finished.
OUTPUT_ENTRIES = ("stats", "manifest.json", "shards", "index", "rejects", TMP_DIR, RUN_FILE)
# Settings that change how a job runs, never what it writes.
EXECUTION_ONLY = {"out", "device", "images_per_batch", "executor", "progress", "ray",
                  "nouns.batch_size", "nouns.n_process", "match.batch_size"}


def fingerprint(config: MineConfig, models: dict, version: str, source, total: int, device_kind: str) -> dict:
    """Everything that shapes the output: settings, models, package version, the device kind (CPU
    and GPU scores differ in the last digits) and the input itself, as its length and a digest of
    its keys in order (a shard is a range of positions: an input that changed would mix them)."""
    settings = config.to_dict()
    for name in EXECUTION_ONLY:
        parent, _, leaf = name.rpartition(".")
        (settings[parent] if parent else settings).pop(leaf, None)
    keys = hashlib.sha256("\n".join(source.key(index) for index in range(total)).encode()).hexdigest()
    return {"settings": settings, "models": models, "dataengine_version": version, "device": device_kind,
            "input": {"samples": total, "keys_sha256": keys}}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    found = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


class OutputFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def locked(self):
        """Hold an exclusive lock on the folder for the whole run; the OS drops it if the process dies."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out: {self.path} is a file, not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_FILE
        handle = open(lock_path, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise ConfigError(f"--out: {self.path} is being written by another dataengine run ({holder}); "
                                  "wait for it to finish or choose another folder") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
            yield self
        finally:
            handle.close()

    def done_shards(self) -> set[int]:
        return {int(path.stem) for path in (self.path / "stats").glob("*.json") if path.stem.isdigit()}

    def prepare(self, job: dict, overwrite: bool) -> int:
        """Make the folder ready for `job`; returns how many finished shards will be kept (resumed).

        Only a folder this package made (it holds run.json) is ever cleaned without --overwrite:
        a non-empty folder of anything else is refused, so that no user file is deleted."""
        run_file = self.path / RUN_FILE
        previous = None if overwrite else self._previous_job(run_file)
        foreign = sorted(set(os.listdir(self.path)) - {LOCK_FILE, f".{RUN_FILE}.tmp"})
        if previous is None and foreign and not overwrite:
            raise ConfigError(f"--out: {self.path} is not empty and was not written by dataengine "
                              f"({', '.join(foreign[:3])}...); choose an empty or new folder, or pass --overwrite")
        finished = bool(self.done_shards())
        if previous is not None and finished and not overwrite:
            changed = _differences(previous, job)
            if changed:
                raise ConfigError(f"--out: {self.path} holds a corpus mined with other settings "
                                  f"({', '.join(changed[:5])}); pass --overwrite or choose another folder")
        if overwrite or not finished or previous is None:
            self._clear()
        shutil.rmtree(self.path / TMP_DIR, ignore_errors=True)
        (self.path / "manifest.json").unlink(missing_ok=True)  # rewritten when this run completes
        temporary = self.path / f".{RUN_FILE}.tmp"
        temporary.write_text(json.dumps({"job": job}, indent=1, sort_keys=True))
        os.replace(temporary, run_file)
        return len(self.done_shards())

    def _previous_job(self, run_file: Path) -> dict | None:
        if not run_file.exists():
            return None
        try:
            job = json.loads(run_file.read_text())["job"]
            if not isinstance(job, dict):
                raise TypeError("not a mapping")
            return job
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConfigError(f"--out: {run_file} is damaged ({type(error).__name__}); pass --overwrite") from error

    def clear_shard(self, shard: int) -> None:
        """Remove what an interrupted attempt left of an unfinished shard."""
        for pattern in (SHARD_STATS, SHARD_TAR, SHARD_INDEX, SHARD_REJECTS):  # the done marker first
            (self.path / pattern.format(shard)).unlink(missing_ok=True)

    def _clear(self) -> None:
        for name in OUTPUT_ENTRIES:
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
