"""The keys of the API's answers, read from the response schemas (app/web/responses.py) that document
them, so that a test checking a shape does not keep its own copy of the key list."""

from __future__ import annotations

from marshmallow import Schema


def answer_keys(schema: type[Schema]) -> set[str]:
    """Every key an answer of `schema` may carry: its fields' names on the wire (`data_key`)."""
    return {field.data_key or name for name, field in schema().fields.items()}


def required_keys(schema: type[Schema]) -> set[str]:
    """The keys an answer of `schema` always carries."""
    return {field.data_key or name for name, field in schema().fields.items() if field.required}


def null_until_known_keys(schema: type[Schema]) -> set[str]:
    """The keys an answer of `schema` always carries, `null` while they have no value."""
    fields = schema().fields.items()
    return {field.data_key or name for name, field in fields if field.required and field.allow_none}
