"""The runbooks: one notebook per incident type under `notebooks/`, and what each takes."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

from automation import NOTEBOOKS

# Set by the runner, never by `-p`: the mode comes from --execute, the actor from who runs.
RESERVED = ("dry_run", "actor", "run_id")


class RunbookError(Exception):
    """A runbook cannot be run as asked."""


class UnknownRunbook(RunbookError):
    """No notebook of that name under notebooks/."""


class BadParameter(RunbookError):
    """A `-p` the notebook does not declare, or a value of the wrong type."""


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # str, int, float, bool, or any (a None default)
    default: str  # as written in the notebook
    help: str


@dataclass(frozen=True)
class Runbook:
    name: str
    path: Path
    title: str

    @property
    def parameters(self) -> dict[str, Parameter]:
        from papermill import inspect_notebook

        found = inspect_notebook(str(self.path))
        return {name: Parameter(name, _type_of(p), p["default"], p["help"])
                for name, p in found.items()}

    def coerce(self, given: dict[str, str]) -> dict:
        """`-p name value` pairs as the types the notebook declares."""
        declared = self.parameters
        values = {}
        for name, raw in given.items():
            if name in RESERVED:
                raise BadParameter(f"{name} is set by the runner (use --execute to act)")
            if name not in declared:
                known = ", ".join(n for n in declared if n not in RESERVED)
                raise BadParameter(f"{self.name} has no parameter {name!r} (it takes: {known})")
            values[name] = _convert(name, raw, declared[name].type)
        return values


def _type_of(declared: dict) -> str:
    """The declared type (an annotation), else the type of the default's literal value."""
    if declared["inferred_type_name"] not in ("None", None):
        return declared["inferred_type_name"]
    try:
        value = ast.literal_eval(declared["default"])
    except (ValueError, SyntaxError):
        return "str"
    return "any" if value is None else type(value).__name__


def _convert(name: str, raw, kind: str):
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if text.lower() in ("none", "null"):
        return None
    if kind == "any":  # a None default: a number if it reads as one, else text
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
        return raw
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(text)
    except ValueError:
        raise BadParameter(f"{name} takes a {kind}, not {raw!r}") from None
    return raw


def _title(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"]).strip().splitlines()
            if source:
                return source[0].lstrip("# ").strip()
    return path.stem


def runbooks(directory: Path = NOTEBOOKS) -> dict[str, Runbook]:
    return {path.stem: Runbook(path.stem, path, _title(path))
            for path in sorted(directory.glob("*.ipynb"))}


def get(name: str, directory: Path = NOTEBOOKS) -> Runbook:
    found = runbooks(directory)
    if name not in found:
        raise UnknownRunbook(f"no runbook {name!r}; there are: {', '.join(found) or 'none'}")
    return found[name]
