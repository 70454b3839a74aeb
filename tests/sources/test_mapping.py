"""Mappings: YAML or JSON, checked, with errors that point at the part at fault."""

from __future__ import annotations

import json

import pytest

from accord.sources.mapping import MappingError, load_mapping
from sources.importing import LOYALTY


def test_a_yaml_mapping_loads_with_implicit_fields() -> None:
    mapping = load_mapping(LOYALTY)
    assert mapping.name == "loyalty"
    assert mapping.version == 1
    assert [f.name for f in mapping.fields][-1] == "tier"  # used by a trait, not declared: the column as is
    types = mapping.output_types()
    assert types["points"] == "integer"
    assert types["joined"] == "date"
    assert types["tier"] == "string"


def test_json_and_yaml_give_the_same_mapping() -> None:
    mapping = load_mapping(LOYALTY)
    assert load_mapping(json.dumps(mapping.document())) == mapping


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("mapping: 2\nname: x\nidentifiers: [{field: a, type: user_id}]\ntraits: [{field: a}]", "mapping:"),
        ("mapping: 1\nname: x\nidentifiers: []\ntraits: [{field: a}]", "identifiers:"),
        (
            "mapping: 1\nname: x\nidentifiers: [{field: a, type: user_id}]\ntraits: [{field: a}]\n"
            "fields: [{name: a, cast: integr}]",
            "fields[0].cast:",
        ),
        (
            "mapping: 1\nname: x\nidentifiers: [{field: a, type: User-Id}]\ntraits: [{field: a}]",
            "identifiers[0].type:",
        ),
        (
            "mapping: 1\nname: x\nidentifiers: [{field: a, type: user_id}]\ntraits: [{field: a}]\n"
            "fields: [{name: a, from: b, sql: 'b || 1'}]",
            "fields[0]:",
        ),
        (
            "mapping: 1\nname: x\nidentifiers: [{field: a, type: user_id}]\ntraits: [{field: a, colour: red}]",
            "traits[0].colour:",
        ),
        ("mapping: 1\nname: x\nidentifiers: [{field: a, type: user_id}]", "mapping:"),
        (
            "mapping: 1\nname: x\nidentifiers: [{field: 'Customer ID', type: user_id}]\ntraits: [{field: a}]",
            "identifiers[0].field",
        ),
        (
            "mapping: 1\nname: x\nidentifiers: [{field: a, type: user_id}]\ntraits: [{field: a}]\n"
            "fields: [{name: a, sql: '1; DROP TABLE x'}]",
            "fields[0].sql:",
        ),
        (
            "mapping: 1\nname: x\nidentifiers: [{field: a, type: user_id}]\ntraits: [{field: a, type: integer}]\n"
            "fields: [{name: a, cast: boolean}]",
            "traits[0].type is integer",
        ),
        (
            "mapping: 1\nname: x\nidentifiers: [{field: a, type: user_id}]\nevent: {name: E, name_field: a}",
            "event:",
        ),
    ],
)
def test_errors_point_at_the_bad_part(text: str, where: str) -> None:
    with pytest.raises(MappingError) as caught:
        load_mapping(text)
    assert where in str(caught.value)


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(MappingError, match="line 4"):
        load_mapping("mapping: 1\nname: x\nidentifiers: [\n  - oops: : :\n")
    with pytest.raises(MappingError, match="not valid JSON"):
        load_mapping('{"mapping": 1,')


@pytest.mark.parametrize("text", ["", "[]", "42", "~", "a string", "\x00", "mapping: !!python/object:os.system x"])
def test_documents_that_are_not_mappings_are_refused(text: str) -> None:
    with pytest.raises(MappingError):
        load_mapping(text)


def test_nul_characters_are_refused() -> None:
    text = (
        '{"mapping": 1, "name": "a\\u0000b", "identifiers": [{"field": "a", "type": "user_id"}], '
        '"traits": [{"field": "a"}]}'
    )
    with pytest.raises(MappingError, match="NUL"):
        load_mapping(text)


def test_oversized_mappings_are_refused() -> None:
    with pytest.raises(MappingError, match="at most"):
        load_mapping("#" * (300 * 1024))
