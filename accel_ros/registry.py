"""Registries: the allowed values of a setting as the keys of one mapping.

In the spirit of mmsegmentation's registries, the keys of a `Registry` *are* the allowed values
of one setting (a config field, a ROS parameter, a command-line option), so the dataclass
check, the parameter descriptor, the CLI's `choices=` and a docs table all read one list and
cannot drift. Each key maps to what is known about that value (its entry: a help line, the
precisions a backend runs, ...). Code that implements the values (flow estimators, network
builders) lives in the layer that owns it and `bind`s its implementations to the registry:
binding fails on a missing or an unknown name, at import, instead of when that value is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Entry = TypeVar("Entry")
Value = TypeVar("Value")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ValueError naming `name` and the choices when `value` is not one of them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} {value!r} is not one of {choices}")


@dataclass(frozen=True)
class Choice:
    """The entry of a value that needs nothing but a line of help."""

    help: str = ""


class Registry(Mapping[str, Entry], Generic[Entry]):
    """The allowed values of the setting `name`, in order, each with its entry.

    `entries` is a mapping {value: entry}, or just the values (each entry then a plain
    `Choice()`). Iterating a registry yields its values; `choices` is them as a tuple (what
    argparse, ROS descriptors and error messages show). Registries are made once and not
    changed afterwards."""

    def __init__(self, name: str, entries: Mapping[str, Entry] | Iterable[str]) -> None:
        if isinstance(entries, Mapping):
            self._entries: dict[str, Any] = dict(entries)
        else:
            self._entries = {value: Choice() for value in entries}
        if not self._entries:
            raise ValueError(f"registry {name!r} has no values")
        self.name = name

    def __getitem__(self, value: str) -> Entry:
        return self._entries[value]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, value: object) -> bool:
        return value in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {self.choices})"

    @property
    def choices(self) -> tuple[str, ...]:
        """The allowed values, in the registry's order."""
        return tuple(self._entries)

    def check(self, value: Any, name: str | None = None) -> None:
        """Raise ValueError naming the setting (or `name`) and its values when `value` is not
        one of them."""
        check_choice(name or self.name, value, self.choices)

    def select(self, keep: Callable[[Entry], bool]) -> tuple[str, ...]:
        """The values whose entry passes `keep`, in the registry's order."""
        return tuple(value for value, entry in self._entries.items() if keep(entry))

    def ordered(self, values: Iterable[str]) -> tuple[str, ...]:
        """Every value in another order (a table's or a plot's); raises unless `values` is
        exactly the registry's values."""
        values = tuple(values)
        if sorted(values) != sorted(self._entries):
            raise ValueError(f"{self.name}: {values} is not an order of {self.choices}")
        return values

    def bind(
        self, implementations: Mapping[str, Value], values: Iterable[str] | None = None
    ) -> dict[str, Value]:
        """{value: implementation} for every value of this registry (or of `values`, some of
        them), in the registry's order. Raises ValueError on a value without an
        implementation or an implementation of no value."""
        wanted = self.choices if values is None else tuple(values)
        for value in wanted:
            self.check(value)
        missing = [value for value in wanted if value not in implementations]
        unknown = [value for value in implementations if value not in wanted]
        if missing or unknown:
            raise ValueError(f"{self.name}: implementations missing for {missing}, "
                             f"given for unknown values {unknown}")
        return {value: implementations[value] for value in self.choices if value in wanted}
