"""JSON Schemas of function payloads and results, from their type annotations.

A function receives exactly what the JSON decoder made of the body, so only annotations
that describe decoded JSON get a schema: `None`, `bool`, `int`, `float`, `str`,
`list[T]` / `Sequence[T]`, `dict[str, T]` / `Mapping[str, T]`, `TypedDict`s, `Literal`
of JSON scalars, unions and `Optional`. Anything else (`Any`, `object`, classes, tuples,
recursive types, a missing or unresolvable annotation) is `{}`: any JSON value.

The gateway checks a plain function's body against its input schema (`first_violation`),
so what the OpenAPI document promises is what the server enforces. Schemas stay within
the small subset `first_violation` understands: `type`, `enum`, `anyOf`, `items`,
`properties`, `required` and `additionalProperties`.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import types
import typing
from collections.abc import Callable
from typing import Any, NotRequired, Required

ANY: dict[str, Any] = {}

_SCALARS: dict[Any, str] = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
}
_SEQUENCES = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_WRAPPERS = (Required, NotRequired, typing.Annotated, typing.Final)
# Deeper annotations than this are documented as any JSON value rather than spelled out.
_MAX_DEPTH = 16


def schema_of(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of the decoded JSON values `annotation` describes; `{}` if unknown."""
    return _schema(annotation, frozenset(), 0)


def signature_schemas(fn: Callable[..., Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The schemas of `fn`'s first parameter and of its return value (`{}` where unknown)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
        params = list(inspect.signature(fn).parameters.values())
    except Exception:  # an annotation naming something absent at run time: not typed
        return ANY, ANY
    first = hints.get(params[0].name, Any) if params else Any
    return schema_of(first), schema_of(hints.get("return", Any))


def _schema(tp: Any, seen: frozenset[int], depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH or id(tp) in seen:
        return ANY
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in _WRAPPERS:
        return _schema(args[0], seen, depth)
    if tp is None:
        return {"type": "null"}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    if origin is typing.Literal:
        if all(a is None or type(a) in (bool, int, str) for a in args):
            return {"enum": list(args)}
        return ANY
    if origin is typing.Union or origin is types.UnionType:
        options = [_schema(a, seen, depth + 1) for a in args]
        return ANY if ANY in options else {"anyOf": options}
    if origin in _SEQUENCES:
        return {"type": "array", "items": _schema(args[0] if args else Any, seen, depth + 1)}
    if origin in _MAPPINGS:
        if args and args[0] is not str:
            return ANY
        value = args[1] if args else Any
        return {"type": "object", "additionalProperties": _schema(value, seen, depth + 1)}
    if tp in _SEQUENCES:
        return {"type": "array", "items": ANY}
    if tp in _MAPPINGS:
        return {"type": "object"}
    if typing.is_typeddict(tp):
        return _typeddict_schema(tp, seen | {id(tp)}, depth + 1)
    return ANY


def _typeddict_schema(tp: Any, seen: frozenset[int], depth: int) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(tp, include_extras=True)
    except Exception:  # a forward reference that cannot be resolved
        return {"type": "object"}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: _schema(hint, seen, depth) for name, hint in hints.items()},
    }
    required = [name for name, hint in hints.items() if _is_required(tp, name, hint)]
    if required:
        schema["required"] = required
    return schema


def _is_required(tp: Any, name: str, hint: Any) -> bool:
    """Whether a TypedDict key is required. With postponed annotations the class cannot
    see `NotRequired` itself, so the resolved hint decides first."""
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is NotRequired:
        return False
    if typing.get_origin(hint) is Required:
        return True
    return name in tp.__required_keys__


def first_violation(value: Any, schema: dict[str, Any], path: str = "$") -> str | None:
    """Where and how `value` (decoded JSON) breaks `schema`, or None when it conforms."""
    if "anyOf" in schema:
        if not any(first_violation(value, option, path) is None for option in schema["anyOf"]):
            return f"{path}: {_describe(value)} matches none of the allowed types"
        return None
    if "enum" in schema:
        if not any(_same_json(value, allowed) for allowed in schema["enum"]):
            choices = ", ".join(_short(a) for a in schema["enum"])
            return f"{path}: {_short(value)} is not one of {choices}"
        return None
    expected = schema.get("type")
    if expected is not None and not _has_type(value, expected):
        return f"{path}: expected {_ARTICLE[expected]}, got {_describe(value)}"
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            if (found := first_violation(item, schema["items"], f"{path}[{index}]")) is not None:
                return found
    if isinstance(value, dict):
        return _object_violation(value, schema, path)
    return None


def _object_violation(value: dict[str, Any], schema: dict[str, Any], path: str) -> str | None:
    for name in schema.get("required", ()):
        if name not in value:
            return f"{path}: the required property {name!r} is missing"
    properties: dict[str, Any] = schema.get("properties", {})
    extra: dict[str, Any] | None = schema.get("additionalProperties")
    for name, item in value.items():
        item_schema = properties.get(name, extra)
        found = (
            None if item_schema is None else first_violation(item, item_schema, f"{path}.{name}")
        )
        if found is not None:
            return found
    return None


_ARTICLE = {
    "null": "null",
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "array": "an array",
    "object": "an object",
}


def _has_type(value: Any, expected: str) -> bool:
    if isinstance(value, bool):  # bool is an int subclass; JSON keeps them apart
        return expected == "boolean"
    if expected == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return _json_type(value) == expected or (expected == "number" and isinstance(value, int))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _describe(value: Any) -> str:
    return _ARTICLE[_json_type(value)]


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality: 1 equals 1.0, but true is not 1 and "1" is not 1."""
    if any(x is None or isinstance(x, bool | str) for x in (a, b)):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
