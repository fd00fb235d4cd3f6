"""Load YAML definition and scenario files, keeping each node's position.

Only safe YAML holding JSON data: no Python or other tags, duplicate keys are
an error, aliases are bounded, and scalars follow the YAML 1.2 core schema:
only ``true``/``false`` are booleans (a state called ``off`` stays the string
``"off"``), ``010`` is ten, ``1:30`` and ``2025-01-01`` are strings. Every
mapping key and sequence item is recorded by JSON pointer with its line and
column (of the value when it is a scalar, else of the key), and every key's own
position too, so later stages can say where a problem is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from esfsm.findings import Finding, pointer
from esfsm.yaml_errors import LoadFailed, reader_failed, syntax_failed

DocumentKind = Literal["definition", "scenarios"]
SCENARIO_SUFFIXES = (".scenarios.yaml", ".scenarios.yml")
GENERATED_SUFFIXES = (".asyncapi.yaml", ".asyncapi.yml")  # written by `esfsm docs`
YAML_SUFFIXES = (".yaml", ".yml")
MAX_NODES = 200_000  # bounds alias expansion ("billion laughs")
MAX_DEPTH = 100  # bounds nesting (and Python's recursion)
MAX_FILE_BYTES = 1024 * 1024  # PyYAML needs ~15 s a MiB: a bigger file is a mistake, not a definition

_CORE = "tag:yaml.org,2002:"
# Tags whose values are JSON data; '<<' (merge) keys are resolved by _Builder._pairs.
_JSON_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map"))


class _TooDeep(yaml.scanner.ScannerError):
    """Flow collections nested past MAX_DEPTH (PyYAML's scanner slows down quadratically with the depth)."""

    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__(None, None, f"the document is nested more than {MAX_DEPTH} levels deep", mark)
        self.mark = mark  # problem_mark, never None here


class _Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's booleans, numbers and no timestamps."""

    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # PyYAML names the parameter so
        if self.flow_level >= MAX_DEPTH:
            raise _TooDeep(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


_REPLACED = {_CORE + "bool", _CORE + "int", _CORE + "float", _CORE + "timestamp"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _CORE + "bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Loader.add_implicit_resolver(
    _CORE + "int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _CORE + "float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """YAML 1.2 integers: decimal ('010' is ten), 0o octal, 0x hex; ValueError for anything else."""
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


_Loader.add_constructor(_CORE + "int", _construct_int)


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
    key_positions: dict[str, Position] = field(default_factory=dict)

    def position(self, ptr: str) -> Position:
        """Position of the node at ptr, or of its nearest ancestor that has one.

        A scalar's position is its value's; a mapping's or list's is its key's.
        """
        while True:
            if ptr in self.positions:
                return self.positions[ptr]
            if not ptr:
                return Position(1, 1)
            ptr = ptr.rsplit("/", 1)[0]

    def key_position(self, ptr: str) -> Position:
        """Position of the mapping key naming the node at ptr (else as position())."""
        return self.key_positions.get(ptr) or self.position(ptr)

    def finding(self, ptr: str, message: str, rule: str, severity: str = "error", *, key: bool = False) -> Finding:
        """A finding at ptr; key=True points at the key itself (an unknown or badly named key)."""
        pos = self.key_position(ptr) if key else self.position(ptr)
        return Finding(self.path, pos.line, pos.column, ptr, message, rule, severity)  # type: ignore[arg-type]


def kind_of(path: Path | str) -> DocumentKind:
    return "scenarios" if str(path).endswith(SCENARIO_SUFFIXES) else "definition"


def discover(paths: Iterable[Path | str] | Path | str) -> list[Path]:
    """YAML files under paths (files as given, folders recursively, sorted; in folders the
    AsyncAPI documents `esfsm docs` writes, *.asyncapi.yaml, are not definitions and are left out)."""
    if isinstance(paths, (str, Path)):  # one path, not its characters
        paths = [paths]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and p.suffix in YAML_SUFFIXES and not p.name.endswith(GENERATED_SUFFIXES)
                )
            )
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
            raise LoadFailed(1, 1, f"the file is empty; expected {_expected(kind)}", "yaml-empty")
        if _expanded_size(node) > MAX_NODES:
            raise _Builder._failed(
                node,
                f"the document expands to more than {MAX_NODES} values; "
                "is an alias repeated too often (a 'billion laughs')?",
                "yaml-size",
            )
        builder = _Builder()
        data = builder.build(node, "")
    except LoadFailed as err:
        return None, [Finding(path, err.line, err.column, "", err.message, err.rule)]
    except RecursionError:  # block nesting deep enough to exhaust Python's stack before MAX_DEPTH is seen
        return None, [Finding(path, 1, 1, "", f"the document is nested more than {MAX_DEPTH} levels deep", "yaml-size")]
    if not isinstance(data, dict):
        return None, [
            Finding(
                path,
                node.start_mark.line + 1,
                node.start_mark.column + 1,
                "",
                f"the root must be a mapping ({_expected(kind)}), got {_type_name(data)}",
                "yaml-root",
            )
        ]
    return Document(path, kind, data, builder.positions, builder.key_positions), []


def load_file(path: Path | str) -> tuple[Document | None, list[Finding]]:
    try:
        if not Path(path).exists():
            return None, [Finding(str(path), 1, 1, "", "no such file or folder", "io")]
        if not Path(path).is_file():  # a pipe or a device would block the read, or never end
            return None, [
                Finding(
                    str(path),
                    1,
                    1,
                    "",
                    "not a regular file (a pipe, a socket or a device?); give definition files or folders",
                    "io",
                )
            ]
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        return None, [Finding(str(path), 1, 1, "", f"cannot read the file: {err.strerror}", "io")]
    if len(raw) > MAX_FILE_BYTES:
        return None, [
            Finding(
                str(path),
                1,
                1,
                "",
                f"the file is larger than {MAX_FILE_BYTES // 1024} KiB, the most "
                "esfsm reads from one definition or scenario file; split it",
                "yaml-size",
            )
        ]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = raw.rfind(b"\n", 0, err.start) + 1
        line = raw[: err.start].count(b"\n") + 1
        column = len(raw[line_start : err.start].decode("utf-8", "replace")) + 1
        return None, [
            Finding(
                str(path),
                line,
                column,
                "",
                f"the file is not valid UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start} cannot be decoded; "
                "save the file as UTF-8",
                "yaml-encoding",
            )
        ]
    return load_text(text, str(path))


def load_paths(paths: Iterable[Path | str] | Path | str) -> tuple[list[Document], list[Finding]]:
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
    except yaml.reader.ReaderError as err:  # control characters
        raise reader_failed(text, err) from err
    try:
        return loader.get_single_node()
    except yaml.reader.ReaderError as err:
        raise reader_failed(text, err) from err
    except _TooDeep as err:
        raise LoadFailed(err.mark.line + 1, err.mark.column + 1, str(err.problem), "yaml-size") from err
    except yaml.MarkedYAMLError as err:
        raise syntax_failed(text, err) from err
    except yaml.YAMLError as err:
        raise LoadFailed(1, 1, f"invalid YAML: {err}".replace("\n", " "), "yaml-syntax") from err
    except RecursionError as err:
        raise LoadFailed(1, 1, f"the document is nested more than {MAX_DEPTH} levels deep", "yaml-size") from err
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes the tree has once every alias is expanded, counted without expanding them."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 0  # a recursive alias counts nothing here; _Builder reports it
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        sizes[id(node)] = total = min(1 + sum(size(child) for child in children), MAX_NODES + 1)
        return total

    return size(root)


class _Builder:
    """Turns a composed node tree into plain Python values and records positions."""

    def __init__(self) -> None:
        self.positions: dict[str, Position] = {}
        self.key_positions: dict[str, Position] = {}
        self._constructor = _Loader("")
        self._count = 0
        self._open: list[yaml.Node] = []  # the nodes being built, outermost first

    def build(self, node: yaml.Node, ptr: str) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise self._failed(
                node,
                f"the document expands to more than {MAX_NODES} values; "
                "is an alias repeated too often (a 'billion laughs')?",
                "yaml-size",
            )
        if any(node is parent for parent in self._open):
            raise self._failed(node, "this anchored node contains an alias to itself (a recursive alias)", "yaml-alias")
        if len(self._open) >= MAX_DEPTH:
            raise self._failed(node, f"the document is nested more than {MAX_DEPTH} levels deep", "yaml-size")
        self.positions.setdefault(ptr, Position(node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if node.tag not in _JSON_TAGS:
            raise self._bad_tag(node)
        self._open.append(node)
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, ptr)
            return [self.build(item, ptr + pointer(i)) for i, item in enumerate(node.value)]
        finally:
            self._open.pop()

    def _mapping(self, node: yaml.MappingNode, ptr: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, key_node, value_node in self._pairs(node, ()):
            child = ptr + pointer(key)
            at = value_node if isinstance(value_node, yaml.ScalarNode) and not _is_empty(value_node) else key_node
            self.positions[child] = Position(at.start_mark.line + 1, at.start_mark.column + 1)
            self.key_positions[child] = Position(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = self.build(value_node, child)
        return result

    def _pairs(self, node: yaml.MappingNode, merging: tuple[yaml.Node, ...]) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node) in assignment order: merged pairs ('<<') first, so explicit keys win.

        Implemented here rather than with PyYAML's flatten_mapping, which rewrites
        the (possibly aliased) node in place.
        """
        merged: list[tuple[str, yaml.Node, yaml.Node]] = []
        explicit: list[tuple[str, yaml.Node, yaml.Node]] = []
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _CORE + "merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in reversed(sources):  # the first source wins, so it is assigned last
                    if not isinstance(source, yaml.MappingNode) or source.tag != _CORE + "map":
                        raise self._failed(
                            source,
                            f"a merge key '<<' takes a mapping or a list of mappings, got {_node_kind(source)}",
                            "yaml-merge",
                        )
                    if any(source is n for n in (node, *merging, *self._open)):
                        raise self._failed(
                            source, "this anchored node contains an alias to itself (a recursive alias)", "yaml-alias"
                        )
                    merged.extend(self._pairs(source, (*merging, node)))
                continue
            key = self._key(key_node)
            if key in seen:
                raise self._failed(
                    key_node,
                    f"duplicate key {key!r} (first defined on line {seen[key].start_mark.line + 1})",
                    "yaml-duplicate-key",
                )
            seen[key] = key_node
            explicit.append((key, key_node, value_node))
        self._count += len(merged)
        if self._count > MAX_NODES:
            raise self._failed(
                node,
                f"the document expands to more than {MAX_NODES} values; "
                "is an alias repeated too often (a 'billion laughs')?",
                "yaml-size",
            )
        return merged + explicit

    def _key(self, node: yaml.Node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self._failed(node, f"mapping keys must be strings, got {_node_kind(node)}", "yaml-key")
        key = self._scalar(node)
        if key is None:
            raise self._failed(node, "mapping keys must be strings, got nothing (null)", "yaml-key")
        return str(key).lower() if isinstance(key, bool) else str(key)

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag not in _JSON_TAGS:
            raise self._bad_tag(node)
        try:
            return self._constructor.construct_object(node, deep=True)
        except (
            yaml.constructor.ConstructorError,
            ValueError,
            KeyError,
            IndexError,
        ) as err:  # '!!float abc', '!!float '
            tag = node.tag.replace(_CORE, "!!")
            raise self._failed(node, f"{node.value!r} is not a valid value for the tag {tag!r}", "yaml-tag") from err

    @staticmethod
    def _failed(node: yaml.Node, message: str, rule: str) -> LoadFailed:
        return LoadFailed(node.start_mark.line + 1, node.start_mark.column + 1, message, rule)

    @classmethod
    def _bad_tag(cls, node: yaml.Node) -> LoadFailed:
        tag = "!!" + node.tag[len(_CORE) :] if node.tag.startswith(_CORE) else node.tag
        return cls._failed(
            node,
            f"the tag {tag!r} is not allowed; only plain YAML data is (strings, numbers, "
            "true/false, null, lists and mappings)",
            "yaml-tag",
        )


def _is_empty(node: yaml.ScalarNode) -> bool:
    """'key:' with nothing after it (a null): its position is the key's."""
    return node.value == "" and node.style is None


def _expected(kind: DocumentKind) -> str:
    return "a scenario file" if kind == "scenarios" else "an aggregate definition"


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a scalar"


def _type_name(value: Any) -> str:
    return {
        type(None): "nothing (null)",
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def iter_documents(docs: Iterable[Document], kind: DocumentKind) -> Iterator[Document]:
    return (d for d in docs if d.kind == kind)
