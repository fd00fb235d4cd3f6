"""The CEL library's run-time complaints about operators, in words that fit the case.

For an operator applied to values it has no overload for, the library says
``Unsupported operation: map + map. CEL does not coerce between types — both
operands must be the same type. Convert explicitly with int(x), ...``: the
advice is wrong when both sides already have the same type, and converting a
map or a list with int(x) is never the answer. The sentence here names the
operator and the two CEL types, and gives only the hint that applies.
"""

from __future__ import annotations

import re

_UNSUPPORTED = re.compile(r"^Unsupported operation: (\w+) (\S+) (\w+)\.")
_CEL_NAMES = {"float": "double"}  # the library names a few types as Python does
_CONVERTIBLE = frozenset({"int", "uint", "double", "string"})  # int(x), uint(x), double(x) and string(x) take these
_ARITHMETIC = {  # the CEL types each operator is defined for, both sides of one type (int(x) etc. convert them)
    "+": ("int", "uint", "double", "string"),
    "-": ("int", "uint", "double"),
    "*": ("int", "uint", "double"),
    "/": ("int", "uint", "double"),
    "%": ("int", "uint"),
}


def unsupported_operation(text: str) -> str | None:
    """A sentence for the library's 'Unsupported operation: A op B. ...', or None for any other message."""
    match = _UNSUPPORTED.match(text)
    if match is None:
        return None
    left, op, right = (
        _CEL_NAMES.get(match.group(1), match.group(1)),
        match.group(2),
        _CEL_NAMES.get(match.group(3), match.group(3)),
    )
    sentence = f"the operator {op!r} is not defined for {_a(left)} and {_a(right)}"
    if "map" in (left, right) and op == "+":
        return f"{sentence}; maps cannot be added or merged in CEL: write the resulting map's fields one by one"
    if "null" in (left, right):
        return f"{sentence}; null has no operators (is a field null?)"
    convertible = _ARITHMETIC.get(op, ())
    targets = [kind for kind in (left, right) if kind in convertible]
    if left != right and left in _CONVERTIBLE and right in _CONVERTIBLE and targets:
        how = " or ".join(f"{kind}(x)" for kind in targets)
        return f"{sentence}; CEL does not convert between types: convert one side to the other's type with {how}"
    return sentence


def _a(kind: str) -> str:
    if kind in ("null", "bytes"):
        return kind
    return f"an {kind}" if kind[0] in "aeio" else f"a {kind}"
