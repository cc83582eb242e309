"""One registry style for every pluggable kind: sources, proposal generators, executors, benchmark
datasets, training phases and losses.

A registry maps a name to "module:attribute", imported on first use, so that naming a choice
never imports the heavy modules behind the others (a Ray executor, transformers, datasets). An
unknown name is one clear error that lists the choices under the flag that chose it.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import import_module

from .config import ConfigError


class Registry:
    def __init__(self, kind: str, flag: str, entries: dict[str, str], error: type[Exception] = ConfigError,
                 hint: str = ""):
        self.kind, self.flag, self.error, self.hint = kind, flag, error, hint
        self._targets = dict(entries)

    def register(self, name: str, target: str) -> None:
        """Add `name` -> "module:attribute" (another package's source, generator, dataset...)."""
        self._targets[name] = target

    def get(self, name: str):
        if name not in self._targets:
            hint = f"; {self.hint}" if self.hint else ""
            raise self.error(f"{self.flag}: unknown {self.kind} {name!r} (available: {', '.join(self)}{hint})")
        module, _, attribute = self._targets[name].partition(":")
        return getattr(import_module(module), attribute)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def names(self) -> tuple[str, ...]:
        return tuple(self._targets)
