"""Reading study files (TOML, or YAML when PyYAML is installed) and finding the line of any key.

Parsing is done by ``tomllib`` / ``yaml.safe_load``; a small scanner then records the line of
every key and array item, so an error about ``experiments.probe.sigmaa`` can say "line 14".

>>> data, lines = parse_text('name = "s"\\n[experiments.si]\\nmethod = "pattern"\\n', "s.toml")
>>> data["experiments"]["si"]["method"], lines.line(("experiments", "si", "method"))
('pattern', 3)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tl_spec.errors import TLSpecError

__all__ = ["KeyLines", "parse_text", "read_study_file"]

KeyPath = tuple[Any, ...]
_BARE = re.compile(r"[A-Za-z0-9_\-]+")


class KeyLines:
    """Line numbers (1-based) of keys and array items, addressed by their path in the data.

    >>> KeyLines({("a",): 2, ("a", "b"): 3}).line(("a", "b", "c"))
    3
    """

    def __init__(self, lines: dict[KeyPath, int] | None = None) -> None:
        self.lines = dict(lines or {})

    def line(self, path: KeyPath) -> int | None:
        """The line of ``path``, else of its longest recorded prefix, else ``None``."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


class _TomlScanner:
    """Records the line of every key / array item of a TOML text that ``tomllib`` accepted."""

    def __init__(self, text: str) -> None:
        self.s, self.i, self.n = text, 0, len(text)
        self.lines: dict[KeyPath, int] = {}
        self.aot: dict[tuple[str, ...], int] = {}

    def lineno(self, i: int | None = None) -> int:
        return self.s.count("\n", 0, self.i if i is None else i) + 1

    def peek(self, k: int = 1) -> str:
        return self.s[self.i:self.i + k]

    def skip(self, newlines: bool) -> None:
        while self.i < self.n:
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif c == "#":
                while self.i < self.n and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def string(self) -> str:
        for quote in ('"""', "'''"):
            if self.peek(3) == quote:
                end = self.s.find(quote, self.i + 3)
                end = self.n if end < 0 else end + 3
                while end < self.n and self.s[end] == quote[0]:  # up to two extra quotes
                    end += 1
                text, self.i = self.s[self.i + 3:end - 3], end
                return text
        quote, start = self.s[self.i], self.i + 1
        self.i += 1
        while self.i < self.n and self.s[self.i] != quote:
            self.i += 2 if quote == '"' and self.s[self.i] == "\\" else 1
        self.i += 1
        return self.s[start:self.i - 1]

    def key(self) -> list[str]:
        parts = []
        while True:
            self.skip(False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                m = _BARE.match(self.s, self.i)
                if not m:
                    return parts
                parts.append(m.group(0))
                self.i = m.end()
            self.skip(False)
            if self.peek() != ".":
                return parts
            self.i += 1

    def value(self, path: KeyPath) -> None:
        self.skip(False)
        c = self.peek()
        if c in ('"', "'"):
            self.string()
        elif c == "[":
            self.i += 1
            idx = 0
            while self.i < self.n:
                self.skip(True)
                if self.peek() == "]":
                    self.i += 1
                    return
                if self.peek() == ",":
                    self.i += 1
                    idx += 1
                    continue
                self.lines.setdefault(path + (idx,), self.lineno())
                self.value(path + (idx,))
        elif c == "{":
            self.i += 1
            while self.i < self.n:
                self.skip(True)
                if self.peek() == "}":
                    self.i += 1
                    return
                if self.peek() == ",":
                    self.i += 1
                    continue
                line = self.lineno()
                parts = self.key()
                if not parts:
                    self.i += 1
                    continue
                self.lines.setdefault(path + tuple(parts), line)
                self.skip(False)
                if self.peek() == "=":
                    self.i += 1
                self.value(path + tuple(parts))
        else:
            while self.i < self.n and self.s[self.i] not in ",]}\n#":
                self.i += 1

    def header_path(self, parts: list[str], array: bool) -> KeyPath:
        out: list[Any] = []
        for k in range(len(parts)):
            out.append(parts[k])
            prefix = tuple(parts[:k + 1])
            last = k == len(parts) - 1
            if last and array:
                self.aot[prefix] = self.aot.get(prefix, -1) + 1
            if prefix in self.aot:
                out.append(self.aot[prefix])
        return tuple(out)

    def scan(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while self.i < self.n:
            self.skip(True)
            if self.i >= self.n:
                break
            line = self.lineno()
            if self.peek() == "[":
                array = self.peek(2) == "[["
                self.i += 2 if array else 1
                table = self.header_path(self.key(), array)
                for k in range(1, len(table) + 1):
                    self.lines.setdefault(table[:k], line)
                self.i = self.s.find("\n", self.i) if "\n" in self.s[self.i:] else self.n
                continue
            parts = self.key()
            if not parts:  # not a key: skip the line (tomllib accepted the file, so rare)
                nl = self.s.find("\n", self.i)
                self.i = self.n if nl < 0 else nl
                continue
            path = table + tuple(parts)
            self.lines.setdefault(path, line)
            self.skip(False)
            if self.peek() == "=":
                self.i += 1
            self.value(path)
        return self.lines


def _yaml_lines(text: str) -> dict[KeyPath, int]:
    import yaml

    out: dict[KeyPath, int] = {}

    def walk(node: Any, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                sub = path + (k.value,)
                out.setdefault(sub, k.start_mark.line + 1)
                walk(v, sub)
        elif isinstance(node, yaml.SequenceNode):
            for idx, item in enumerate(node.value):
                out.setdefault(path + (idx,), item.start_mark.line + 1)
                walk(item, path + (idx,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return out


def parse_text(text: str, where: str) -> tuple[dict[str, Any], KeyLines]:
    """Parse a study text (YAML if ``where`` ends in .yaml/.yml, else TOML) and its key lines."""
    if where.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise TLSpecError(f"{where}: reading YAML study files needs PyYAML, which is not "
                              "installed; pip install pyyaml (or tl_spec[study]), or write the "
                              "study in TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TLSpecError(f"{where}: not valid YAML: {exc}") from None
        lines = _yaml_lines(text)
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise TLSpecError(f"{where}: reading TOML on Python 3.10 needs tomli; pip install "
                                  "tomli (or tl_spec[study])") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TLSpecError(f"{where}: not valid TOML: {exc}; fix the syntax there") from None
        lines = _TomlScanner(text).scan()
    if not isinstance(data, dict):
        raise TLSpecError(f"{where}: a study file holds a table of keys (name, models, twins, "
                          f"experiments, ...), found {type(data).__name__}")
    return data, KeyLines(lines)


def read_study_file(path: str | Path) -> tuple[dict[str, Any], KeyLines]:
    """Read and parse a study file; a clear error if it is missing or not UTF-8."""
    p = Path(path)
    if not p.is_file():
        why = "is a directory" if p.is_dir() else "does not exist"
        raise TLSpecError(f"study file {str(p)!r} {why}; pass the path of a .toml (or .yaml) "
                          "study file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TLSpecError(f"{p}: not UTF-8 text ({exc}); save the study file as UTF-8") from None
    return parse_text(text, p.name)
