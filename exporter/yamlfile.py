"""A YAML file read for the config or a web config file: the file's problems in plain words, with a line.

PyYAML says what its parser met ("mapping values are not allowed here"); a user wants to know what to change
("a ':' where a value was expected ... line 12"). Each known PyYAML problem has its plain wording here, and the
line pointed at is where the mistake is (where a key began, where a quote opened), not where PyYAML noticed it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from exporter.errors import ConfigError


def read_yaml(file: Path) -> object:
    """The parsed document (None when empty); ConfigError (never a yaml, OS or Unicode error) naming the file."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: not UTF-8 text"]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(file, text, exc)]) from exc


_YAML_PLAIN = (
    ("found character '\\t'", "a tab: YAML indents with spaces only"),
    (
        "mapping values are not allowed",
        "a ':' where a value was expected (a missing space after a ':', or an "
        "unquoted value holding ': ' that needs quotes)",
    ),
    ("could not find expected ':'", "a key without its ':', or a line indented wrongly"),
    ("expected <block end>", "this line's indentation does not match the lines above it"),
    ("found unexpected end of stream", "a quote or a bracket that is never closed"),
    ("did not find expected ',' or", "a list or mapping in brackets that is not closed, or a missing comma"),
    ("found undefined alias", "an alias (*name) with no anchor (&name) before it"),
    ("found duplicate anchor", "two anchors with the same name"),
    ("did not find expected key", "a line indented wrongly, or a '-' list item where a key was expected"),
    ("did not find expected '-' indicator", "a list item that is not indented like the ones before it"),
)


def _key_without_colon(text: str, mark: Any) -> int | None:
    """The 1-based line of a key that lost its ':' when PyYAML noticed it only on the line below (its plain scalar
    ran on), else None."""
    lines = text.splitlines()
    if mark is None or not 0 < mark.line < len(lines):
        return None
    here, before = lines[mark.line], lines[mark.line - 1]
    indent = len(here) - len(here.lstrip())
    if before.strip() and ":" not in before and len(before) - len(before.lstrip()) == indent:
        return int(mark.line)
    return None


def _yaml_problem(file: Path, text: str, exc: yaml.YAMLError) -> str:
    """A YAML error as a line number and what is wrong, in plain words (PyYAML's own words as a last resort)."""
    problem = str(getattr(exc, "problem", None) or exc)
    context = str(getattr(exc, "context", "") or "")
    mark, context_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    words = next((plain for needle, plain in _YAML_PLAIN if needle in problem or needle in context), problem)
    if "mapping values are not allowed" in problem and (line := _key_without_colon(text, mark)) is not None:
        return f"{file}: not valid YAML: line {line}: a key without its ':'"
    if ("could not find expected ':'" in problem or "unexpected end of stream" in problem) and context_mark:
        mark = context_mark  # where the key began, or the unclosed quote opened: not where it was noticed
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{file}: not valid YAML: {where}{words}"
