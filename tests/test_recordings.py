"""The recorded-exchange fixtures (tests/recordings/*.json) are well-formed and agree with their README."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest
from recorded import (
    FAMILIES,
    RECORDINGS,
    Exchange,
    FixtureError,
    _exchange,
    exchange,
    flow,
    load,
    load_all,
)

API_VERSIONS = {"2025-06-01", "2024-07-01.20.0"}
COMMIT = re.compile(r"[0-9a-f]{40}")
JSON_CONTENT_TYPE = "application/json; odata=minimalmetadata"
ALL = load_all()


def test_every_family_file_exists_and_loads() -> None:
    assert sorted(p.stem for p in RECORDINGS.glob("*.json")) == sorted(FAMILIES)
    for family in FAMILIES:
        exchanges = load(family)
        assert exchanges, family
        assert all(ex.family == family for ex in exchanges)


def test_names_are_unique() -> None:
    names: list[str] = []
    for family in FAMILIES:
        names.extend(raw["name"] for raw in json.loads((RECORDINGS / f"{family}.json").read_text()))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates
    assert len(ALL) == len(names)


@pytest.mark.parametrize("ex", ALL, ids=lambda ex: ex.name)
def test_exchange_is_well_formed(ex: Exchange) -> None:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", ex.name)
    assert ex.source.repo == "Azure/azure-sdk-assets"
    assert COMMIT.fullmatch(ex.source.commit)
    assert ex.source.path.endswith(".json")
    assert ex.source.path.split("/", 1)[0] in {"net", "java", "js", "python"}
    assert ex.source.api_version in API_VERSIONS
    assert ex.request.method in {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
    assert ex.request.path.startswith("/")
    assert ex.request.query.get("api-version") == ex.source.api_version
    assert 100 <= ex.response.status <= 599
    assert ex.facts
    assert all(fact.strip() == fact and fact for fact in ex.facts)
    assert exchange(ex.name) is ex


@pytest.mark.parametrize("ex", ALL, ids=lambda ex: ex.name)
def test_bodies_match_status_and_headers(ex: Exchange) -> None:
    body = ex.response.body
    content_type = ex.response.header("content-type")
    if ex.request.method == "HEAD":
        assert body is None
    if isinstance(body, dict) and content_type is not None:
        assert content_type == JSON_CONTENT_TYPE
    if ex.response.status >= 400 and body is not None:
        assert set(body) >= {"odata.metadata", "code", "message"}
        assert body["message"]["lang"] == "en-US"
        request_id = ex.response.header("request-id")
        assert request_id is not None
        assert f"\nRequestId:{request_id}\n" in body["message"]["value"]
        for item in body.get("values", []):
            assert set(item) == {"key", "value"}
            assert isinstance(item["value"], str)


def test_flows_are_ordered_within_one_recording() -> None:
    members: dict[str, list[Exchange]] = defaultdict(list)
    for ex in ALL:
        if ex.flow is not None:
            members[ex.flow].append(ex)
    assert members
    for name, exchanges in members.items():
        orders = [ex.order for ex in exchanges]
        assert len(set(orders)) == len(orders), name
        assert len({(ex.source.path, ex.source.commit) for ex in exchanges}) == 1, name
        ordered = flow(name)
        assert [ex.order for ex in ordered] == sorted(o for o in orders if o is not None)
        positive = [ex.source.entry for ex in ordered if ex.source.entry >= 0]
        negative = [ex.source.entry for ex in ordered if ex.source.entry < 0]
        assert positive == sorted(positive), name
        assert negative == sorted(negative), name
        assert all(ex.source.entry >= 0 for ex in ordered[: len(positive)]), name


def test_readme_lists_every_fixture() -> None:
    readme = (RECORDINGS / "README.md").read_text()
    missing = [ex.name for ex in ALL if f"`{ex.name}`" not in readme]
    assert not missing


def test_recorded_casing_that_differs_from_the_spec() -> None:
    """Spot checks of the facts emulators most often get wrong."""
    add = exchange("add_task_collection_success").response.body
    assert add["value"][0]["status"] == "Success"
    created = exchange("pool_get_right_after_create").response.body
    assert created["allocationState"] == "resizing"
    assert created["vmSize"] == "standard_d1_v2"
    too_large = exchange("request_body_too_large").response
    assert too_large.status == 413
    assert too_large.body["values"] == [{"key": "MaxLimit", "value": "1048576"}]
    assert exchange("auth_failed_unknown_account").response.status == 403


def test_unknown_names_raise_key_error() -> None:
    with pytest.raises(KeyError):
        exchange("no_such_exchange")
    with pytest.raises(KeyError):
        load("no_such_family")
    with pytest.raises(KeyError):
        flow("no_such_flow")


def test_malformed_fixture_is_refused() -> None:
    good = json.loads((RECORDINGS / "errors.json").read_text())[0]
    bad_commit = {**good, "source": {**good["source"], "commit": "abc"}}
    no_facts = {**good, "facts": []}
    bad_path = {**good, "request": {**good["request"], "path": "pools"}}
    for raw in (bad_commit, no_facts, bad_path):
        with pytest.raises(FixtureError):
            _exchange(raw, "errors", "errors.json[0]")
