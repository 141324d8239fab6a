"""Dict / JSON round-trips shared by the frozen config dataclasses.

    >>> ShareConfig.from_json(ShareConfig(rank=4).to_json()) == ShareConfig(rank=4)
    True
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, TypeVar

from .errors import ConfigError

__all__ = ["ConfigIO", "help_field"]

C = TypeVar("C", bound="ConfigIO")


def help_field(text: str, **kwargs: Any) -> Any:
    """A dataclass field with help text (shown by the CLI and the docs)."""
    return dataclasses.field(metadata={"help": text}, **kwargs)


class ConfigIO:
    """Mixin for frozen dataclass configs: validated dict/JSON round-trips and field help."""

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        name = cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(f"a {name} must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {name} field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cls.__name__} JSON is malformed: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text (used by the CLI and the docs)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
