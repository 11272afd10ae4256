"""Finding the inputs a schema marks `"format": "asset"`, and splitting MCP results' files."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from mcp import types

from pao.asset_inputs import AssetField, asset_fields, media_matches, mentions_assets
from pao.errors import InvalidInput
from pao.mcp import McpCallFailed, split_result, with_files
from pao.pipeline import asset_references, validate_payload
from pao.tools import ToolRegistry, ToolSpec

ID = "0b8e7d6c-1a2b-4c3d-9e8f-001122334455"
OTHER = "7f000001-0000-4000-8000-000000000001"
ASSET = {"type": "string", "format": "asset"}


def paths(schema: dict[str, Any], value: Any) -> list[tuple[Any, ...]]:
    return [f.path for f in asset_fields(schema, value)]


def test_properties_items_refs_and_additional_properties() -> None:
    schema = {
        "type": "object",
        "$defs": {"audio": {"type": "string", "format": "asset", "contentMediaType": "audio/*"}},
        "properties": {
            "file": {"$ref": "#/$defs/audio"},
            "pages": {"type": "array", "items": ASSET},
            "pair": {"type": "array", "prefixItems": [ASSET, {"type": "integer"}]},
            "named": {"type": "object", "additionalProperties": ASSET},
            "note": {"type": "string"},
        },
    }
    value = {
        "file": ID,
        "pages": [ID, OTHER],
        "pair": [OTHER, 3],
        "named": {"a": ID},
        "note": OTHER,  # a plain string field: never an asset, whatever it holds
    }
    found = asset_fields(schema, value)
    assert [f.path for f in found] == [
        ("file",),
        ("pages", 0),
        ("pages", 1),
        ("pair", 0),
        ("named", "a"),
    ]
    assert found[0].media == "audio/*"
    assert found[1].media is None
    assert paths(schema, {"note": ID}) == []  # an absent field is not looked for


def test_only_the_branches_the_value_takes() -> None:
    schema = {
        "type": "object",
        "properties": {
            "source": {
                "anyOf": [
                    {"type": "string", "format": "uri", "pattern": "^https://"},
                    {"type": "string", "format": "asset"},
                ]
            },
            "either": {
                "oneOf": [{"type": "integer"}, {"type": "string", "format": "asset"}],
            },
        },
        "if": {"properties": {"kind": {"const": "file"}}, "required": ["kind"]},
        "then": {"properties": {"input": ASSET}},
    }
    assert paths(schema, {"source": "https://example.com/x"}) == []
    assert paths(schema, {"source": ID}) == [("source",)]
    assert paths(schema, {"either": 3}) == []
    assert paths(schema, {"either": ID}) == [("either",)]
    assert paths(schema, {"kind": "file", "input": ID}) == [("input",)]
    assert paths(schema, {"kind": "url", "input": ID}) == []


def test_a_schema_of_endless_references_costs_a_bounded_walk() -> None:
    loop = {"$defs": {"a": {"$ref": "#/$defs/a", "format": "asset"}}, "$ref": "#/$defs/a"}
    assert paths(loop, ID) == [()]
    wide: dict[str, Any] = {"$defs": {}, "format": "asset"}
    for i in range(30):  # each level refers to the next one twice
        wide["$defs"][f"d{i}"] = {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 2}
    wide["$defs"]["d30"] = ASSET
    wide["allOf"] = [{"$ref": "#/$defs/d0"}]
    assert paths(wide, ID) == [()]


def test_unknown_branches_are_checked_rather_than_skipped() -> None:
    # A pattern the linear engine refuses (a lookahead): the branch counts as taken.
    schema = {"anyOf": [{"type": "string", "pattern": "(?=x)", "format": "asset"}]}
    assert paths(schema, ID) == [()]


def test_ids_and_media_types() -> None:
    assert AssetField((), ID).asset_id() is not None
    assert AssetField((), ID.replace("-", "")).asset_id() is not None
    for bad in ("", "abc", 12, None, ID + "0", {"id": ID}):
        assert AssetField((), bad).asset_id() is None
    assert media_matches(None, "image/png")
    assert media_matches("audio/*", "audio/mpeg")
    assert not media_matches("audio/*", "video/mp4")
    assert not media_matches("audio/*", "audiox/mpeg")
    assert media_matches("image/png, image/jpeg", "image/jpeg")
    assert media_matches("IMAGE/JPG", "image/jpeg")  # an alias names the same type
    assert not media_matches("image/png", "image/jpeg")
    assert mentions_assets({"properties": {"a": {"items": [{"format": "asset"}]}}})
    assert not mentions_assets({"properties": {"asset": {"format": "uri"}}})


def _registry() -> ToolRegistry:
    registry = ToolRegistry.builtin()
    schema = {
        "type": "object",
        "properties": {"file": {**ASSET, "contentMediaType": "audio/*"}, "lang": {}},
        "required": ["file"],
    }
    registry.set_remote(
        [ToolSpec(name="media.transcribe", description="", input_schema=schema)], loaded_at=0
    )
    return registry


def test_create_time_checks_need_an_id_and_leave_lookups_for_later() -> None:
    registry = _registry()
    steps: list[dict[str, Any]] = [
        {"id": "fetch", "uses": "http.request", "with": {"url": "https://x.org/a.mp3"}},
        {"id": "a", "uses": "media.transcribe", "with": {"file": ID}},
        {"id": "b", "uses": "media.transcribe", "with": {"file": "${steps.fetch.asset_id}"}},
    ]
    pipeline = validate_payload({"pipeline": steps}, registry, schedule_kind="cron")
    refs = asset_references(pipeline, registry)
    assert [(loc, f.path, f.value, f.media) for loc, f in refs] == [
        (("payload", "pipeline", 1, "with"), ("file",), ID, "audio/*")
    ]
    bad = [{"id": "c", "uses": "media.transcribe", "with": {"file": "not-an-id"}}]
    with pytest.raises(InvalidInput) as caught:
        validate_payload({"pipeline": bad}, registry, schedule_kind="cron")
    errors = caught.value.errors
    assert [e.loc for e in errors] == [("payload", "pipeline", 0, "with", "file")]
    assert "is not an asset id" in errors[0].message


def test_save_body_has_its_own_rules() -> None:
    registry = ToolRegistry.builtin()

    def errors(with_: dict[str, Any]) -> list[str]:
        step = {"id": "s", "uses": "http.request", "with": {"url": "https://x.org", **with_}}
        try:
            validate_payload({"pipeline": [step]}, registry, schedule_kind="cron")
        except InvalidInput as exc:
            return [e.message for e in exc.errors]
        return []

    assert errors({"save_body": True, "timeout_seconds": 600}) == []
    assert errors({"timeout_seconds": 600})  # a body held in memory: a minute at most
    [both] = errors({"save_body": True, "max_bytes": 10})
    assert both.startswith("use only one of: save_body, max_bytes;")
    assert errors({"save_body": False, "max_bytes": 10}) == []


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_an_mcp_result_s_files_are_split_from_its_text() -> None:
    result = types.CallToolResult(
        content=[
            types.TextContent(type="text", text='{"caption": "a cat"}'),
            types.ImageContent(type="image", data=_b64(b"\x89PNG..."), mimeType="image/png"),
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(
                    uri="file:///tmp/notes%20one.txt", mimeType="text/plain", text="hello"
                ),
            ),
            types.AudioContent(type="audio", data=_b64(b"ID3"), mimeType="audio/mpeg"),
        ]
    )
    output, files = split_result(result, "draw.cat")
    assert output == {"caption": "a cat"}
    assert [(f.data, f.media_type, f.filename) for f in files] == [
        (b"\x89PNG...", "image/png", "draw.cat-1.png"),
        (b"hello", "text/plain", "notes one.txt"),
        (b"ID3", "audio/mpeg", "draw.cat-3.mp3"),
    ]
    listed = [{"asset_id": ID}]
    assert with_files(output, listed) == {"caption": "a cat", "assets": listed}
    assert with_files([1, 2], listed) == {"result": [1, 2], "assets": listed}
    assert with_files({"assets": 3}, listed) == {"result": {"assets": 3}, "assets": listed}
    assert with_files(output, []) == output

    broken = types.CallToolResult(
        content=[types.ImageContent(type="image", data="not base64!", mimeType="image/png")]
    )
    with pytest.raises(McpCallFailed, match="not valid base64"):
        split_result(broken, "draw.cat")
