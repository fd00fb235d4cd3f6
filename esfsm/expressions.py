"""CEL expressions and data templates.

Every expression in a definition is CEL, compiled once (``cel.compile``) and
evaluated against a dict of variables. Which variables exist depends on where
the expression stands: ``apply`` sees the event but not ``now`` or the command,
so that replaying events is deterministic.

A *template* is how event data and ``apply`` are written: a string is a CEL
expression, a number / boolean / null is itself, and a mapping or list is a
template of its items.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from esfsm.cel_errors import unsupported_operation
from esfsm.errors import EvaluationError

if TYPE_CHECKING:
    from cel import Program  # at run time `cel` is imported by _import_cel, below


def _import_cel() -> types.ModuleType:
    """`import cel` also imports the package's interactive shell (`cel.cli`: typer and
    prompt_toolkit), about 0.3 s of every esfsm command's start. A placeholder stands in
    for `cel.cli` while the package loads and is taken away after, so a later
    `import cel.cli` still gets the real shell."""
    if "cel" in sys.modules:
        return sys.modules["cel"]
    placeholder = types.ModuleType("cel.cli")
    stood_in = sys.modules.setdefault("cel.cli", placeholder) is placeholder
    try:
        import cel
    finally:
        if stood_in and sys.modules.get("cel.cli") is placeholder:
            del sys.modules["cel.cli"]
    if getattr(cel, "cli", None) is placeholder:
        del cel.cli
    return cel


cel = _import_cel()

DECIDE_VARIABLES = frozenset({"cmd", "data", "state", "key", "version", "meta", "now"})
APPLY_VARIABLES = frozenset({"event", "data", "state", "key", "version"})

_STRING = re.compile(r'''(?s)[rR]?(?:"""(?:\\.|.)*?"""|\'\'\'(?:\\.|.)*?\'\'\'|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')''')
_COMPREHENSION = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_FIELD = re.compile(r"(?<![\w.])([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")


@functools.lru_cache(maxsize=4096)
def compile_expression(source: str) -> Program:
    """Compile CEL source; raises ValueError with the parser's message."""
    program: Program = cel.compile(source)  # `cel` is typed as a plain module here
    return program


def syntax_error(source: str) -> str | None:
    """The parser's complaint about source, on one line, or None if it compiles."""
    try:
        compile_expression(source)
    except (ValueError, RuntimeError) as err:
        text = str(err)
        match = re.search(r"ERROR: <input>:(\d+):(\d+): (.*?)(?:\n|$)", text)
        if match:
            return f"{match.group(3)} (at column {match.group(2)})"
        return text.splitlines()[0]
    return None


def _code_only(source: str) -> str:
    """Source with string literals blanked, so names inside strings are not references."""
    return _STRING.sub(lambda m: '""', source)


def free_variables(source: str) -> set[str]:
    """Variables the expression reads, minus names bound by comprehension macros."""
    names = set(compile_expression(source).variables())
    bound = set(_COMPREHENSION.findall(_code_only(source)))
    return names - bound


def field_references(source: str) -> list[tuple[str, str]]:
    """(variable, field) pairs for each ``variable.field`` in the expression, in order."""
    code = _code_only(source)
    bound = set(_COMPREHENSION.findall(code))
    return [(var, fld) for var, fld in _FIELD.findall(code) if var not in bound]


MACROS = ("all", "exists", "exists_one", "map", "filter")
# Every function this CEL implementation evaluates (checked one by one); operators
# (`_+_`, `!_`, `@in`, …) come on top. There is no I/O and no way to add any.
FUNCTIONS = frozenset(
    {
        "size",
        "has",
        "matches",
        "contains",
        "startsWith",
        "endsWith",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "timestamp",
        "duration",
        "type",
        "dyn",
        "getFullYear",
        "getMonth",
        "getDayOfMonth",
        "getDate",
        "getDayOfWeek",
        "getDayOfYear",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
        *MACROS,
    }
)


def unknown_functions(source: str) -> list[str]:
    """Functions the expression calls that CEL here does not have."""
    called = compile_expression(source).functions()
    return [f for f in called if not f.startswith(("_", "!", "-", "@")) and f not in FUNCTIONS]


_MACRO_CALL = re.compile(r"\.\s*(all|exists_one|exists|map|filter)\s*\(")
_PATH_BEFORE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)\s*$")


@dataclass(frozen=True)
class Comprehension:
    """One macro call in an expression: `receiver.macro(var, body)`."""

    macro: str
    receiver: str | None  # the dotted path it iterates over (`data.items`), None if not a plain path
    nested: bool  # inside another comprehension's body


def comprehensions(source: str) -> list[Comprehension]:
    """The comprehension macros of an expression, with what each iterates over."""
    code = _code_only(source)
    calls = []
    for match in _MACRO_CALL.finditer(code):
        depth, end = 0, len(code)
        for i in range(match.end() - 1, len(code)):
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            if depth == 0:
                end = i
                break
        before = code[: match.start()]
        path = _PATH_BEFORE.search(before)
        receiver = None
        if path and not before[: path.start()].rstrip().endswith((".", ")", "]")):
            receiver = re.sub(r"\s+", "", path.group(1))
        calls.append((match.start(), end, match.group(1), receiver))
    return [
        Comprehension(macro, receiver, any(s < start and end <= e for s, e, _, _ in calls))
        for start, end, macro, receiver in calls
    ]


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def to_json_value(value: Any) -> Any:
    """CEL results as JSON values: timestamps become RFC 3339 strings, durations seconds."""
    if type(value) in _JSON_SCALARS:
        return value
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, dt.datetime):
        return format_time(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def format_time(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    elif value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Expression:
    """A compiled CEL expression and where it stands in its definition."""

    source: str
    where: str

    @functools.cached_property
    def program(self) -> Program:
        return compile_expression(self.source)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """The variables the expression reads: only these are handed to CEL, which
        converts every variable it is given on each call (`data` can be large)."""
        return tuple(sorted(free_variables(self.source)))

    @functools.cached_property
    def projection(self) -> Projection | None:
        return projection(self.source, self.names)

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        plan = self.projection
        if plan is not None:
            values = plan.inputs(variables)
            if values is not None:  # every field the expression reads is there
                if plan.single is not None:
                    return values[plan.single]
                key = plan.memo_key(values)
                if key is not None:
                    known = plan.memo.get(key, _UNKNOWN)
                    if known is not _UNKNOWN:
                        return known
                try:
                    result = plan.program.execute(values)
                except Exception:  # noqa: BLE001,S110 - any CEL error: the original program gives it its own words
                    pass
                else:
                    if key is not None and isinstance(result, _SCALARS):
                        if len(plan.memo) >= MEMO_SIZE:
                            plan.memo.clear()
                        plan.memo[key] = result
                    return result
        try:
            used = {name: variables[name] for name in self.names if name in variables}
            return self.program.execute(used)
        except Exception as err:  # the CEL binding raises KeyError, TypeError, RuntimeError, ValueError ...
            raise EvaluationError(self.where, self.source, _reason(err)) from err

    def test(self, variables: Mapping[str, Any]) -> bool:
        result = self.evaluate(variables)
        if not isinstance(result, bool):
            raise EvaluationError(self.where, self.source, f"expected a boolean, got {result!r}")
        return result


# -- projection: hand CEL the fields an expression reads, not whole maps ------
#
# The CEL binding converts each variable it is given on every call, and a map
# costs several microseconds even when small; a rule like `cmd.amount <=
# data.balance` paid more for converting `cmd` and `data` than for evaluating.
# When every use of a map variable is `v.field`, `v['literal']` or
# `'literal' in v`, the expression is compiled a second time with each such use
# replaced by a variable of its own, and given just those values. Anything else
# (comprehensions, `has()`, a map used whole, a missing field, a value that is
# not a map) takes the original program, so results and errors are unchanged.

_MAP_VARIABLES = ("cmd", "data", "event", "meta")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PLAIN_STRING = re.compile(r"""\A(?:'([^'\\\n]*)'|"([^"\\\n]*)")\Z""")
_BEFORE_IN = re.compile(r"(?:^|\(|&&|\|\||,|\?|:)\s*$")
_AFTER_IN = re.compile(r"\s*(?:$|\)|&&|\|\||,|\?|:)")
_SCALARS = (str, int, float, bool, type(None))
_UNKNOWN = object()
MEMO_SIZE = 256  # results remembered per projected expression (then forgotten all at once)
MEMO_TEXT = 200  # longer strings are not remembered


@dataclass(frozen=True)
class Projection:
    program: Program
    reads: tuple[tuple[str, str, str, str], ...]  # (new name, variable, "field" | "present", key)
    passed: tuple[str, ...]  # variables handed over whole
    single: str | None  # the expression is one field read: its value, without CEL

    memo: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def memo_key(self, values: dict[str, Any]) -> tuple[Any, ...] | None:
        """What the result depends on, when it is a few short scalars (None otherwise).
        CEL here is deterministic and `now` is never projected, so equal inputs give equal
        results: a rule over the same header value is evaluated once."""
        key = []
        for value in values.values():
            kind = type(value)
            if kind is str:
                if len(value) > MEMO_TEXT:
                    return None
            elif not (kind is int or kind is bool or value is None):  # floats: 0.0 == -0.0, 1/x differs
                return None
            key.append(kind)
            key.append(value)
        return tuple(key)

    def inputs(self, variables: Mapping[str, Any]) -> dict[str, Any] | None:
        values: dict[str, Any] = {}
        for name, variable, kind, key in self.reads:
            container = variables.get(variable)
            if not isinstance(container, dict):
                return None
            if kind == "present":
                values[name] = key in container
            elif key in container:
                values[name] = container[key]
            else:
                return None
        if self.single is not None and not isinstance(values[self.single], _SCALARS):
            return None  # CEL hands back a copy of a map or list; keep that
        for name in self.passed:
            if name in variables:
                values[name] = variables[name]
        return values


@functools.lru_cache(maxsize=4096)
def projection(source: str, names: tuple[str, ...]) -> Projection | None:
    """The projected form of source (see above), or None when it does not apply."""
    masked = _STRING.sub(lambda m: "#" * len(m.group(0)), source)
    if _MACRO_CALL.search(masked) or re.search(r"(?<![\w.])has\s*\(", masked):
        return None
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    reads: dict[tuple[str, str, str], str] = {}
    passed = [n for n in names if n not in _MAP_VARIABLES]
    for variable in names:
        if variable not in _MAP_VARIABLES:
            continue
        for use in re.finditer(rf"(?<![\w.#]){variable}(?!\w)", masked):
            start, end = use.span()
            rest = masked[end:]
            read: tuple[str, str] | None = None
            field = re.match(rf"\s*\.\s*({_IDENT})(?!\w)(?!\s*\()", rest)
            index = re.match(r"\s*\[\s*(#+)\s*\]", rest)
            literal_in = re.search(r"(#+)\s+in\s+$", masked[:start])
            if field:
                read, end = ("field", field.group(1)), end + field.end()
            elif index:
                key = _PLAIN_STRING.match(source[end + index.start(1) : end + index.end(1)])
                if key is None:
                    return None
                read, end = ("field", key.group(1) if key.group(1) is not None else key.group(2)), end + index.end()
            elif (
                literal_in
                and _BEFORE_IN.search(masked[: literal_in.start()])
                and _AFTER_IN.match(rest)
                and not re.match(r"\s*[.\[]", rest)
            ):
                key = _PLAIN_STRING.match(source[literal_in.start(1) : literal_in.end(1)])
                if key is None:
                    return None
                read, start = (
                    ("present", key.group(1) if key.group(1) is not None else key.group(2)),
                    literal_in.start(),
                )
            else:
                return None  # the map is used whole
            name = reads.setdefault((variable, *read), f"esfsm_p{len(reads)}_")
            edits.append((start, end, name))
    if not edits:
        return None
    rewritten = source
    for start, end, name in sorted(edits, reverse=True):
        rewritten = rewritten[:start] + name + rewritten[end:]
    try:
        program = compile_expression(rewritten)
    except Exception:  # noqa: BLE001 - a rewrite CEL does not take: evaluate the original instead
        return None
    if set(program.variables()) - set(reads.values()) - set(passed):
        return None  # the rewrite read something else: do not trust it
    single = next(iter(reads.values())) if rewritten.strip() in reads.values() else None
    return Projection(
        program, tuple((name, var, kind, key) for (var, kind, key), name in reads.items()), tuple(passed), single
    )


def _reason(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"no such key: {err.args[0]!r}"
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    undefined = _UNDEFINED.match(text)
    if undefined and undefined.group(1) in FUNCTIONS:  # the CEL library's words for a wrong argument type
        return (
            f"function {undefined.group(1)!r} does not take arguments of these types (CEL does not convert "
            "between types: convert with string(x), int(x), double(x) or check the field's schema)"
        )
    bad_regex = _BAD_REGEX.match(text)
    if bad_regex:
        return f"{bad_regex.group(1)} is not a valid regular expression (RE2 syntax)"
    return unsupported_operation(text) or text


_UNDEFINED = re.compile(r"Undefined variable or function: '([^']+)'")
_BAD_REGEX = re.compile(r"Function 'matches' error: (.*) not a valid regex:\s*$")


class Template:
    """A compiled data template (see the module docstring)."""

    __slots__ = ("_build",)

    def __init__(self, raw: Any, where: str) -> None:
        self._build = _compile_template(raw, where)

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        return self._build(variables)  # JSON values already: each expression's result is converted


def _compile_template(raw: Any, where: str) -> Any:
    if isinstance(raw, str):
        expression = Expression(raw, where)
        _ = expression.names  # compile now, not on first use
        evaluate = expression.evaluate

        def leaf(variables: Mapping[str, Any]) -> Any:
            value = evaluate(variables)
            return value if type(value) in _JSON_SCALARS else to_json_value(value)

        return leaf
    if isinstance(raw, Mapping):
        parts = [(str(k), _compile_template(v, f"{where}/{k}")) for k, v in raw.items()]
        return lambda variables: {k: build(variables) for k, build in parts}
    if isinstance(raw, list):
        items = [_compile_template(v, f"{where}/{i}") for i, v in enumerate(raw)]
        return lambda variables: [build(variables) for build in items]
    value = to_json_value(raw)
    return lambda variables: value


def template_expressions(raw: Any, where: str) -> list[tuple[str, str]]:
    """(pointer, source) of every CEL expression inside a template."""
    if isinstance(raw, str):
        return [(where, raw)]
    if isinstance(raw, Mapping):
        return [item for k, v in raw.items() for item in template_expressions(v, f"{where}/{k}")]
    if isinstance(raw, list):
        return [item for i, v in enumerate(raw) for item in template_expressions(v, f"{where}/{i}")]
    return []
