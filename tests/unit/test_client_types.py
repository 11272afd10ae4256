"""pao.client's TypedDicts describe exactly the JSON the API's response models send.

The client stays free of pydantic and of the API's models: it types the JSON it is
given (ids, times and states are strings there). So each TypedDict is compared, field
by field, with the JSON Schema of the API model it reads: the same keys, the same of
them required, and the same JSON types (string, integer, object, array, null).
"""

from __future__ import annotations

import types
import typing
from typing import Any, NotRequired, Union, get_args, get_origin, get_type_hints

import pytest
from pydantic import BaseModel

from api import models as api
from pao import client

# Each client type and the API model whose JSON it is.
PAIRS: list[tuple[type, type[BaseModel]]] = [
    (client.Task, api.TaskPublic),
    (client.Run, api.RunPublic),
    (client.RunDetail, api.RunDetail),
    (client.RunAsset, api.RunAssetPublic),
    (client.RunLog, api.RunLogPublic),
    (client.Occurrence, api.Occurrence),
    (client.Occurrences, api.Occurrences),
    (client.EventAccepted, api.EventAccepted),
    (client.TaskPage, api.Page[api.TaskPublic]),
    (client.RunPage, api.Page[api.RunPublic]),
    (client.LogPage, api.RunLogs),
    (client.Asset, api.AssetPublic),
    (client.AssetPage, api.Page[api.AssetPublic]),
    (client.AssetLink, api.AssetLink),
    (client.Usage, api.UsagePublic),
    (client.UsageWindow, api.UsageWindow),
    (client.HourWindow, api.HourWindow),
]

_JSON = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}
_JSON.update({list: "array", type(None): "null"})


def _hinted(hint: Any) -> set[str]:
    """The JSON types a TypedDict field's annotation allows."""
    if get_origin(hint) in (Union, types.UnionType):
        return set().union(*(_hinted(arm) for arm in get_args(hint)))
    if typing.is_typeddict(hint):
        return {"object"}
    return {_JSON[get_origin(hint) or hint]}


def _schema_types(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """The JSON types a property's JSON Schema allows."""
    if "$ref" in schema:
        return _schema_types(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in schema:
        return set().union(*(_schema_types(arm, defs) for arm in schema["anyOf"]))
    if "type" in schema:
        return {schema["type"]}
    return set(_JSON.values())  # Any: every JSON type


@pytest.mark.parametrize(("typed", "model"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_the_client_types_what_the_api_sends(typed: type, model: type[BaseModel]) -> None:
    schema = model.model_json_schema(mode="serialization")
    defs = schema.get("$defs", {})
    properties: dict[str, Any] = schema["properties"]
    hints = get_type_hints(typed)
    assert set(hints) == set(properties)
    # Read from the hints: under postponed annotations `__required_keys__` misses NotRequired.
    extras = get_type_hints(typed, include_extras=True)
    required = {name for name, hint in extras.items() if get_origin(hint) is not NotRequired}
    assert required == set(schema.get("required", []))
    for name, hint in hints.items():
        allowed = _schema_types(properties[name], defs)
        if allowed == set(_JSON.values()):
            continue  # the API sends any JSON there; the client may narrow it
        assert _hinted(hint) == allowed, name
