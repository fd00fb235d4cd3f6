"""Load YAML definition and scenario files, keeping each node's position.

Only safe YAML: no Python tags, duplicate keys are an error, and only
``true``/``false`` are booleans (a state called ``off`` stays the string
``"off"``). Every mapping key and sequence item is recorded by JSON pointer
with its line and column, so later stages can say where a problem is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from esfsm.findings import Finding, pointer

DocumentKind = Literal["definition", "scenarios"]
SCENARIO_SUFFIXES = (".scenarios.yaml", ".scenarios.yml")
YAML_SUFFIXES = (".yaml", ".yml")
MAX_NODES = 200_000  # bounds alias expansion ("billion laughs")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: on/off/yes/no stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


@dataclass(frozen=True)
class Position:
    line: int
    column: int


@dataclass
class Document:
    """One loaded file: its data and the position of every node by JSON pointer."""

    path: str
    kind: DocumentKind
    data: Any
    positions: dict[str, Position] = field(default_factory=dict)

    def position(self, ptr: str) -> Position:
        """Position of the node at ptr, or of its nearest ancestor that has one."""
        while True:
            if ptr in self.positions:
                return self.positions[ptr]
            if not ptr:
                return Position(1, 1)
            ptr = ptr.rsplit("/", 1)[0]

    def finding(self, ptr: str, message: str, rule: str, severity: str = "error") -> Finding:
        pos = self.position(ptr)
        return Finding(self.path, pos.line, pos.column, ptr, message, rule, severity)  # type: ignore[arg-type]


class _LoadFailed(Exception):
    def __init__(self, line: int, column: int, message: str, rule: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message, self.rule = line, column, message, rule


def kind_of(path: Path | str) -> DocumentKind:
    return "scenarios" if str(path).endswith(SCENARIO_SUFFIXES) else "definition"


def discover(paths: Iterable[Path | str]) -> list[Path]:
    """YAML files under paths (files as given, folders recursively, sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES))
        else:
            found.append(path)
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def load_text(text: str, path: str) -> tuple[Document | None, list[Finding]]:
    """Parse one file's text into a Document, or report why it cannot be read."""
    kind = kind_of(path)
    try:
        node = _compose(text)
        if node is None:
            what = "a scenario file" if kind == "scenarios" else "an aggregate definition"
            raise _LoadFailed(1, 1, f"the file is empty; expected {what}", "yaml-empty")
        builder = _Builder()
        data = builder.build(node, "")
    except _LoadFailed as err:
        return None, [Finding(path, err.line, err.column, "", err.message, err.rule)]
    if not isinstance(data, dict):
        return None, [
            Finding(path, 1, 1, "", f"the root must be a mapping, got {_type_name(data)}", "yaml-root")
        ]
    return Document(path, kind, data, builder.positions), []


def load_file(path: Path | str) -> tuple[Document | None, list[Finding]]:
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        return None, [Finding(str(path), 1, 1, "", f"cannot read the file: {err.strerror}", "io")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return None, [Finding(str(path), line, 1, "", f"the file is not valid UTF-8 (byte {err.start})", "yaml-encoding")]
    return load_text(text, str(path))


def load_paths(paths: Iterable[Path | str]) -> tuple[list[Document], list[Finding]]:
    documents: list[Document] = []
    findings: list[Finding] = []
    for path in discover(paths):
        doc, problems = load_file(path)
        findings.extend(problems)
        if doc is not None:
            documents.append(doc)
    return documents, findings


def _compose(text: str) -> yaml.Node | None:
    try:
        loader = _Loader(text)
    except yaml.YAMLError as err:  # reader errors: control characters
        raise _LoadFailed(1, 1, f"invalid YAML: {err}".replace("\n", " "), "yaml-syntax") from err
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = err.problem or "invalid YAML"
        if "but found another document" in str(err.problem):
            problem = "expected a single YAML document, found several"
        raise _LoadFailed(line, col, f"invalid YAML: {problem}", "yaml-syntax") from err
    except yaml.YAMLError as err:
        raise _LoadFailed(1, 1, f"invalid YAML: {err}".replace("\n", " "), "yaml-syntax") from err
    finally:
        loader.dispose()


class _Builder:
    """Turns a composed node tree into plain Python values and records positions."""

    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}
        self._constructor = _Loader("")
        self._count = 0

    def build(self, node: yaml.Node, ptr: str) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise _LoadFailed(1, 1, f"the document has more than {MAX_NODES} nodes (alias expansion?)", "yaml-size")
        self.positions.setdefault(ptr, Position(node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, ptr)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise self._bad_tag(node)
            return [self.build(item, ptr + pointer(i)) for i, item in enumerate(node.value)]
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as err:
            raise self._bad_tag(node) from err

    def _mapping(self, node: yaml.MappingNode, ptr: str) -> dict[str, Any]:
        if node.tag != "tag:yaml.org,2002:map":
            raise self._bad_tag(node)
        try:
            self._constructor.flatten_mapping(node)
        except yaml.constructor.ConstructorError as err:
            mark = err.problem_mark or node.start_mark
            raise _LoadFailed(mark.line + 1, mark.column + 1, f"invalid merge key: {err.problem}", "yaml-syntax") from err
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.build(key_node, ptr + "/~key")
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise _LoadFailed(
                    key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                    f"mapping keys must be strings, got {_type_name(key)}", "yaml-key",
                )
            key = key if isinstance(key, str) else str(key).lower() if isinstance(key, bool) else str(key)
            if key in result:
                first = self.positions[ptr + pointer(key)]
                raise _LoadFailed(
                    key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                    f"duplicate key {key!r} (first defined on line {first.line})", "yaml-duplicate-key",
                )
            child = ptr + pointer(key)
            at = value_node if isinstance(value_node, yaml.ScalarNode) and value_node.value != "" else key_node
            self.positions[child] = Position(at.start_mark.line + 1, at.start_mark.column + 1)
            result[key] = self.build(value_node, child)
        self.positions.pop(ptr + "/~key", None)
        return result

    @staticmethod
    def _bad_tag(node: yaml.Node) -> _LoadFailed:
        return _LoadFailed(
            node.start_mark.line + 1, node.start_mark.column + 1,
            f"the tag {node.tag!r} is not allowed; only plain YAML data is (no custom or Python tags)", "yaml-tag",
        )


def _type_name(value: Any) -> str:
    return {
        type(None): "nothing (null)", str: "a string", int: "an integer", float: "a number",
        bool: "a boolean", list: "a list", dict: "a mapping",
    }.get(type(value), type(value).__name__)


def iter_documents(docs: Iterable[Document], kind: DocumentKind) -> Iterator[Document]:
    return (d for d in docs if d.kind == kind)
