"""Reading TOML config with errors that name the file and the line.

`tomllib` reports syntax errors with a line; it cannot say where a
well-formed but wrong value sits. `TomlDoc` keeps the text and finds the
line of `key` inside `[table]` (or `[[table]]` number n) for those errors.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from astrid_runtime.errors import ConfigError

T = TypeVar("T")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"']+)\s*=")


class TomlDoc:
    """A parsed TOML file plus the means to point at a line in it."""

    def __init__(self, path: Path, text: str, error: type[ConfigError] = ConfigError):
        self.path = path
        self.text = text
        self.error = error
        try:
            self.data: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise error(f"{path}: {e}") from None

    @classmethod
    def load(cls, path: Path, error: type[ConfigError] = ConfigError) -> TomlDoc:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise error(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise error(f"{path}: cannot read: {e}") from None
        return cls(path, text, error)

    def line_of(self, table: str, key: str | None, index: int = 0) -> int | None:
        """1-based line of `key` in `[table]` ("" = top level), the n-th `[[table]]`."""
        current = ""
        seen = -1
        for number, line in enumerate(self.text.splitlines(), 1):
            header = _HEADER.match(line)
            if header:
                current = header.group(2).replace('"', "").replace("'", "").strip()
                if current == table:
                    seen += 1
                    if key is None and seen == index:
                        return number
                continue
            m = _KEY.match(line)
            if (key is not None and m and current == table and max(seen, 0) == index
                    and m.group(1).strip("\"'") == key):
                return number
        return None

    def fail(self, message: str, table: str = "", key: str | None = None,
             index: int = 0) -> ConfigError:
        """An error naming the file and, when it can be found, the line."""
        line = self.line_of(table, key, index)
        where = f"{self.path}:{line}" if line else str(self.path)
        return self.error(f"{where}: {message}")

    def get(self, table: dict[str, Any], key: str, kind: type[T] | tuple[type, ...],
            default: Any, *, table_name: str = "", index: int = 0,
            check: Callable[[Any], str | None] | None = None) -> Any:
        """`table[key]` checked for type (and by `check`), or `default` when absent."""
        if key not in table:
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = False if isinstance(value, bool) and bool not in kinds else isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(f"{key} must be {names}, not {type(value).__name__}",
                            table_name, key, index)
        if check is not None:
            problem = check(value)
            if problem:
                raise self.fail(f"{key}: {problem}", table_name, key, index)
        return value

    def string_list(self, table: dict[str, Any], key: str, *, table_name: str = "",
                    index: int = 0) -> tuple[str, ...]:
        value = self.get(table, key, list, [], table_name=table_name, index=index)
        if not all(isinstance(v, str) for v in value):
            raise self.fail(f"{key} must be a list of strings", table_name, key, index)
        return tuple(value)

    def unknown_keys(self, table: dict[str, Any], allowed: set[str], table_name: str = "",
                     index: int = 0) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(f"unknown key {key!r} (known: {', '.join(sorted(allowed))})",
                                table_name, key, index)
