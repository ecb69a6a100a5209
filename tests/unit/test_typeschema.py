"""JSON Schemas from annotations, and the check the gateway applies to plain bodies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, NotRequired, Optional, Required, TypedDict

import pytest

from batchgate import App
from batchgate.app import FunctionInfo, Registry
from batchgate.typeschema import first_violation, schema_of, signature_schemas


class Point(TypedDict):
    x: float
    y: float
    label: NotRequired[str | None]


class Loose(TypedDict, total=False):
    name: str
    size: Required[int]


class Tree(TypedDict):
    value: int
    children: list[Tree]


class Opaque:
    pass


@pytest.mark.parametrize(
    ("annotation", "schema"),
    [
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (str, {"type": "string"}),
        (bool, {"type": "boolean"}),
        (None, {"type": "null"}),
        (type(None), {"type": "null"}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (Sequence[str], {"type": "array", "items": {"type": "string"}}),
        (list, {"type": "array", "items": {}}),
        (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
        (Mapping[str, Any], {"type": "object", "additionalProperties": {}}),
        (dict, {"type": "object"}),
        (Literal["a", 1, None], {"enum": ["a", 1, None]}),
        (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),  # noqa: UP045
        (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        (Annotated[int, "metres"], {"type": "integer"}),
        # Not what decoded JSON is: documented (and checked) as any JSON value.
        (Any, {}),
        (object, {}),
        (Opaque, {}),
        (tuple[int, int], {}),
        (dict[int, str], {}),
        (int | Any, {}),
        (Literal[1.5], {}),
    ],
)
def test_schema_of_an_annotation(annotation: Any, schema: dict[str, Any]) -> None:
    assert schema_of(annotation) == schema


def test_a_typeddict_lists_its_required_keys_even_with_postponed_annotations() -> None:
    assert schema_of(Point) == {
        "type": "object",
        "properties": {
            "x": {"type": "number"},
            "y": {"type": "number"},
            "label": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["x", "y"],
    }
    assert schema_of(Loose)["required"] == ["size"]


def test_a_recursive_typeddict_stops_at_the_recursion() -> None:
    schema = schema_of(Tree)
    assert schema["properties"]["children"] == {"type": "array", "items": {}}


def test_signature_schemas_read_the_first_parameter_and_the_return() -> None:
    def place(point: Point, extra: int = 0) -> list[str]:
        return []

    def unannotated(payload):  # type: ignore[no-untyped-def]
        return payload

    def unresolvable(payload: Missing) -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    assert signature_schemas(place) == (schema_of(Point), schema_of(list[str]))
    assert signature_schemas(unannotated) == ({}, {})
    assert signature_schemas(unresolvable) == ({}, {})


@pytest.mark.parametrize(
    ("value", "violation"),
    [
        ({"x": 1, "y": 2.5}, None),
        ({"x": 1, "y": 2, "label": None, "more": [1]}, None),
        ({"x": 1}, "$: the required property 'y' is missing"),
        ({"x": True, "y": 1}, "$.x: expected a number, got a boolean"),
        ({"x": "1", "y": 1}, "$.x: expected a number, got a string"),
        ({"x": 1, "y": 1, "label": 3}, "$.label: an integer matches none of the allowed types"),
        ([1, 2], "$: expected an object, got an array"),
        (None, "$: expected an object, got null"),
    ],
)
def test_first_violation_names_where_a_body_breaks_its_schema(
    value: Any, violation: str | None
) -> None:
    assert first_violation(value, schema_of(Point)) == violation


def test_integers_follow_json_not_python() -> None:
    integer = schema_of(int)
    assert first_violation(3, integer) is None
    assert first_violation(3.0, integer) is None  # JSON Schema: 3.0 is an integer
    assert first_violation(3.5, integer) == "$: expected an integer, got a number"
    assert first_violation(True, integer) == "$: expected an integer, got a boolean"
    assert first_violation(3, schema_of(float)) is None
    enum = schema_of(Literal[1, "1", True])
    assert first_violation(1.0, enum) is None
    assert first_violation(False, enum) is not None
    assert first_violation(2, enum) == '$: 2 is not one of 1, "1", true'


def test_items_and_values_are_checked_with_their_path() -> None:
    schema = schema_of(dict[str, list[int]])
    assert first_violation({"a": [1, 2], "b": []}, schema) is None
    assert first_violation({"a": [1, "2"]}, schema) == "$.a[1]: expected an integer, got a string"


def test_registered_functions_carry_their_schemas_through_the_manifest() -> None:
    app = App("typed")

    @app.function
    def place(point: Point) -> dict[str, int]:
        return {}

    @app.map(batched=True)
    def lengths(items: list[str]) -> list[int]:
        return []

    @app.map
    def untyped(item):  # type: ignore[no-untyped-def]
        return item

    registry = Registry.from_manifest(app.registry().manifest())
    info = registry.get("place")
    assert info.input_schema == schema_of(Point)
    assert info.output_schema == {"type": "object", "additionalProperties": {"type": "integer"}}
    # Map items are not checked at the gateway, so a map function's input is any value.
    assert registry.get("lengths").input_schema == {}
    assert registry.get("lengths").output_schema == {"type": "integer"}
    assert registry.get("untyped").output_schema == {}
    # An older manifest without schemas still loads: any JSON value.
    old = FunctionInfo.from_json({"name": "old", "kind": "function"})
    assert old.input_schema == {} and old.output_schema == {}
    hash(info)  # schemas are left out of the hash: infos stay usable as keys
