"""The output folder of a run: one writer at a time (a lock), and resumption of an interrupted run.

`run.json` records the fingerprint of the job (every setting that shapes the output, the models
and the package version). A rerun with the same fingerprint resumes: shards whose
`stats/%06d.json` exists are done and skipped, the others are cleaned and redone. A rerun with a
different fingerprint is refused unless `--overwrite`, which starts the folder afresh. A folder
with no finished shard is simply reused.

Nothing is ever deleted that a run of dataengine did not write: `run.json` also records what its
run writes (the shard count and the file patterns), and cleaning (for --overwrite, or a folder with
no finished shard) deletes exactly those files. Anything else inside the output's own entries
(`shards/`, `index/`, `rejects/`, `stats/`, `_tmp/`, `manifest.json`) is in the way: the run is
refused with a message instead. Other entries of the folder are left alone. The output's entries
must be real folders and files: a symbolic link among them (which would send output, or deletions,
outside --out) is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path

import filelock

from .config import ConfigError, MineConfig
from .write import SHARD_INDEX, SHARD_REJECTS, SHARD_STATS, SHARD_TAR, TMP_DIR, temporary_name

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
# Cleared in this order: the done markers first and run.json last, so that a run killed while
# clearing leaves a folder whose rerun clears it again, never one that looks finished.
OUTPUT_ENTRIES = ("stats", "manifest.json", "shards", "index", "rejects", TMP_DIR, RUN_FILE)
OUTPUT_FOLDERS = ("stats", "shards", "index", "rejects", TMP_DIR)
SHARD_FILES = (SHARD_STATS, SHARD_TAR, SHARD_INDEX, SHARD_REJECTS)  # the done marker first
RUN_FILES = ("manifest.json",)  # written once per run, besides the shards' files
# Settings that change how a job runs, never what it writes ("ray" is the whole section, its
# connect_timeout_s included; mask_pixels_per_chunk bounds memory with the same output, so that a
# resume with a lower one gets past out-of-memory). match.cpu_threads is not one: it changes the
# last digits of scores.
EXECUTION_ONLY = {"out", "device", "images_per_batch", "executor", "progress", "ray", "mask_pixels_per_chunk",
                  "nouns.batch_size", "nouns.n_process", "match.batch_size"}


def fingerprint(config: MineConfig, models: dict, version: str, source, total: int, device_kind: str) -> dict:
    """Everything that shapes the output: settings, models, package version, the device kind (CPU
    and GPU scores differ in the last digits) and the input itself, as its length and a digest of
    its keys in order (a shard is a range of positions: an input that changed would mix them)."""
    settings = _outcome_settings(config.to_dict())
    keys = hashlib.sha256("\n".join(source.key(index) for index in range(total)).encode()).hexdigest()
    return {"settings": settings, "models": models, "dataengine_version": version, "device": device_kind,
            "input": {"samples": total, "keys_sha256": keys}}


def _outcome_settings(settings: dict) -> dict:
    """`settings` (a config as a dict) without the EXECUTION_ONLY ones, in place."""
    for name in EXECUTION_ONLY:
        parent, _, leaf = name.rpartition(".")
        container = settings.get(parent) if parent else settings
        if isinstance(container, dict):
            container.pop(leaf, None)
    return settings


def _comparable(job: dict) -> dict:
    """A recorded job as this version fingerprints it: a run.json written before a setting became
    execution-only still holds it, and resumes all the same."""
    if not isinstance(job, dict) or not isinstance(job.get("settings"), dict) or "kind" in job:
        return job  # "kind": a post-pass (dataengine filter), whose settings are not a mining run's
    settings = _with_defaults(_outcome_settings(json.loads(json.dumps(job["settings"]))),
                              _outcome_settings(MineConfig().to_dict()))
    return {**job, "settings": settings}


def _with_defaults(recorded: dict, defaults: dict) -> dict:
    """Settings added since a run.json was written take their defaults there (new settings start
    out off, so the folder was mined as their defaults say): such a folder resumes."""
    merged = dict(recorded)
    for name, value in defaults.items():
        if name not in merged:
            merged[name] = value
        elif isinstance(value, dict) and isinstance(merged[name], dict):
            merged[name] = _with_defaults(merged[name], value)
    return merged


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


def shard_count(job: dict) -> int:
    """How many shards the job writes, from its fingerprint (input samples, samples per shard; a
    post-pass names its count)."""
    if "shards" in job:
        return int(job["shards"])
    per_shard = job["settings"]["write"]["samples_per_shard"]
    return -(-int(job["input"]["samples"]) // int(per_shard))


def written_files(record: dict) -> set[str]:
    """Every path (relative to the folder) that the run of `record` (run.json's content) may have
    written, its temporaries under _tmp/ included."""
    writes = record.get("writes") or {"shards": shard_count(record["job"]), "patterns": list(SHARD_FILES),
                                      "files": list(RUN_FILES)}  # a run.json from before "writes" existed
    names = {pattern.format(shard) for pattern in writes["patterns"] for shard in range(int(writes["shards"]))}
    names |= set(writes["files"])
    return names | {f"{TMP_DIR}/{temporary_name(name)}" for name in names}


def _named_like_ours(name: str) -> bool:
    """Whether `name` has the form of a file dataengine writes (any shard number, or a temporary)."""
    if name.startswith(f"{TMP_DIR}/"):
        name = name[len(TMP_DIR) + 1 :].replace("__", "/", 1)
    return name in RUN_FILES or any(re.fullmatch(re.escape(pattern).replace(r"\{:06d\}", r"\d{6,}"), name)
                                    for pattern in SHARD_FILES)


def _relative_files(root: Path, folder: str) -> list[str]:
    """Every entry under `folder` (files, links, subfolders with a trailing /), relative to root."""
    found = []
    for parent, dirs, files in os.walk(root / folder):
        base = Path(parent).relative_to(root)
        found.extend(str(base / name) for name in files)
        found.extend(str(base / name) + ("" if (Path(parent) / name).is_symlink() else "/") for name in dirs)
    return found


def _write_lock_holder(descriptor: int) -> None:
    """Who holds the lock, for the message another run prints."""
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)


def _lock_holder(lock_path: Path) -> str:
    try:
        return lock_path.read_text(errors="replace").strip()[:200] or "another process"
    except OSError:
        return "another process"


class OutputFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def locked(self):
        """Hold an exclusive lock on the folder for the whole run (`filelock.FileLock`: flock on POSIX,
        which the OS drops if the process dies; see filelock's docs for network file systems). The
        lock file is removed on every way out, and a folder this call created is removed again when
        nothing was written into it."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out: {self.path} is a file, not a folder")
        created = not self.path.exists()
        lock_path = self.path / LOCK_FILE
        lock = filelock.FileLock(lock_path, timeout=0, on_acquired=_write_lock_holder)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if lock_path.is_symlink():
                raise ConfigError(f"--out: {lock_path} is a symbolic link; remove it")
            lock.acquire()
        except filelock.Timeout:
            raise ConfigError(f"--out: {self.path} is being written by another dataengine run "
                              f"({_lock_holder(lock_path)}); wait for it to finish or choose another folder") from None
        except OSError as error:
            raise ConfigError(f"--out: cannot write to {self.path} ({error.strerror or type(error).__name__})") from None
        try:
            yield self
        finally:
            with contextlib.suppress(OSError):
                lock_path.unlink()  # while still held: filelock retries a peer that locked the removed file
            lock.release()
            if created:
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only when empty: a run that failed before writing anything

    def done_shards(self) -> set[int]:
        return {int(path.stem) for path in (self.path / "stats").glob("*.json") if path.stem.isdigit()}

    def prepare(self, job: dict, overwrite: bool) -> int:
        """Make the folder ready for `job`; returns how many finished shards will be kept (resumed).

        Only what a run of this package wrote (its run.json names it) is ever deleted: a non-empty
        folder of anything else is refused without --overwrite, and with it, anything else inside
        the output's own entries is refused, so that no user file is deleted."""
        self._check_entries()
        run_file = self.path / RUN_FILE
        record = self._previous_record(run_file, damaged_ok=overwrite)
        previous = None if overwrite or record is None else record["job"]
        foreign = sorted(set(os.listdir(self.path)) - {LOCK_FILE, f".{RUN_FILE}.tmp"})
        if record is None and foreign and not overwrite:
            raise ConfigError(f"--out: {self.path} is not empty and was not written by dataengine "
                              f"({', '.join(foreign[:3])}...); choose an empty or new folder, or pass --overwrite")
        finished = bool(self.done_shards())
        if previous is not None and finished and not overwrite:
            changed = _differences(_comparable(previous), job)
            if changed:
                raise ConfigError(f"--out: {self.path} holds a corpus mined with other settings "
                                  f"({', '.join(changed[:5])}); pass --overwrite or choose another folder")
        ours = self._ours(record)
        if overwrite or not finished or previous is None:
            self._clear(ours)
        else:
            self._remove([name for name in _relative_files(self.path, TMP_DIR) if name in ours])
            (self.path / "manifest.json").unlink(missing_ok=True)  # rewritten when this run completes
        temporary = self.path / f".{RUN_FILE}.tmp"
        writes = {"shards": shard_count(job), "patterns": list(SHARD_FILES), "files": list(RUN_FILES)}
        temporary.write_text(json.dumps({"job": job, "writes": writes}, indent=1, sort_keys=True))
        os.replace(temporary, run_file)
        return len(self.done_shards())

    def _check_entries(self) -> None:
        """The output's entries are real folders and files inside --out: a symbolic link would send
        writes or deletions elsewhere."""
        for name in (*OUTPUT_ENTRIES, f".{RUN_FILE}.tmp"):
            path = self.path / name
            if path.is_symlink():
                raise ConfigError(f"--out: {path} is a symbolic link; dataengine writes only inside --out: "
                                  "remove the link or choose another folder")
            if name in OUTPUT_FOLDERS and path.exists() and not path.is_dir():
                raise ConfigError(f"--out: {path} is not a folder; move it away or choose another folder")

    def _previous_record(self, run_file: Path, damaged_ok: bool) -> dict | None:
        """run.json of an earlier run, or None. A damaged one stops the run, unless --overwrite
        (then the files of the forms dataengine writes count as its own, nothing else)."""
        if not run_file.exists():
            return None
        try:
            record = json.loads(run_file.read_text())
            if not isinstance(record, dict) or not isinstance(record["job"], dict):
                raise TypeError("not a mapping")
            written_files(record)  # readable
            return record
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as error:
            if damaged_ok:
                return None
            raise ConfigError(f"--out: {run_file} is damaged ({type(error).__name__}); pass --overwrite") from error

    def clear_shard(self, shard: int) -> None:
        """Remove what an interrupted attempt left of an unfinished shard."""
        for pattern in SHARD_FILES:  # the done marker first
            (self.path / pattern.format(shard)).unlink(missing_ok=True)

    def _clear(self, ours: set[str]) -> None:
        """Delete what an earlier run wrote (`ours`), refusing first if anything else is there."""
        present = self._in_the_way(ours)
        self._remove(sorted(present, key=lambda name: not name.startswith("stats/")))  # done markers first
        for folder in OUTPUT_FOLDERS:
            with contextlib.suppress(FileNotFoundError):
                (self.path / folder).rmdir()
        (self.path / RUN_FILE).unlink(missing_ok=True)  # last: a clear cut short is redone by the rerun

    def _in_the_way(self, ours: set[str]) -> list[str]:
        """What the output's entries hold (relative paths); refused if any of it is not `ours`."""
        present = self._present()
        theirs = [name for name in present if name not in ours]  # subfolders included: never ours
        if theirs:
            raise ConfigError(f"--out: {self.path} holds files dataengine did not write ({', '.join(theirs[:3])}"
                              f"{', ...' if len(theirs) > 3 else ''}); move them away or choose another folder")
        return present

    def _present(self) -> list[str]:
        present = [name for folder in OUTPUT_FOLDERS for name in _relative_files(self.path, folder)]
        return present + [name for name in RUN_FILES if (self.path / name).exists()]

    def check_overwrite(self) -> None:
        """Refuse now what `prepare(..., overwrite=True)` would refuse (links, files of others), before
        a caller (the demo) writes anything into the folder."""
        if not self.path.is_dir():
            return
        self._check_entries()
        record = self._previous_record(self.path / RUN_FILE, damaged_ok=True)
        self._in_the_way(self._ours(record))

    def _ours(self, record: dict | None) -> set[str]:
        """What an earlier run wrote: what its record names; with a damaged record (only --overwrite
        reads past one), the files of the forms dataengine writes; with no record, nothing."""
        if record is not None:
            return written_files(record)
        if (self.path / RUN_FILE).exists():
            return {name for name in self._present() if _named_like_ours(name)}
        return set()

    def _remove(self, names: list[str]) -> None:
        for name in names:
            (self.path / name).unlink(missing_ok=True)
