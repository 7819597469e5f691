"""The attribute picker the OTLP and Zipkin adapters share, and what the OTLP adapter keeps
between records (worked-out resources): results must be what a fresh look-up gives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_adapter_support import one

from tokentrail.ingest.adapters import Picker, otlp

NAMES = ["a", "b", "c", "d", "e"]
FIELDS = st.dictionaries(
    st.sampled_from(["token", "scope", "peer"]),
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=4),  # a name may repeat in a list
    min_size=1,
)
VALUES = st.one_of(st.sampled_from(["x", "", " ", "\t", "y"]), st.none(), st.integers(-2, 2))
MAPS = st.dictionaries(st.sampled_from([*NAMES, "other"]), VALUES, max_size=6)


def reference(fields: Mapping[str, Sequence[str]], *maps: Mapping[str, Any]) -> dict[str, str]:
    """Per field, the value of its first name present and usable: in the first map, else the
    next; usable means not None, and not empty or blank once made text."""
    found: dict[str, str] = {}
    for field, names in fields.items():
        for values in maps:
            usable = [str(values[n]) for n in names if n in values and values[n] is not None]
            usable = [v for v in usable if v and not v.isspace()]
            if usable:
                found[field] = usable[0]
                break
    return found


@settings(max_examples=300, deadline=None)
@given(FIELDS, st.lists(MAPS, min_size=1, max_size=3))
def test_a_pick_is_the_first_usable_name_per_field_and_an_earlier_map_wins(
    fields: dict[str, list[str]], maps: list[dict[str, Any]]
) -> None:
    picker = Picker(fields)
    for _ in range(2):  # the second time from the plan worked out the first time
        assert picker.pick(*maps) == reference(fields, *maps)
        assert picker.pick_over(picker.pick(*maps[1:]), maps[0]) == reference(fields, *maps)


def test_odd_attribute_names_do_not_grow_the_plans_without_end() -> None:
    picker = Picker({"token": ["a"]})
    for n in range(3000):
        assert picker.pick({"a": "k", f"name-{n}": "v"}) == {"token": "k"}
    assert picker.pick({"a": "k", "long" * 5000: "v"}) == {"token": "k"}
    assert len(picker._plans) <= 1024


def test_a_resource_worked_out_once_is_read_with_each_settings_own_names() -> None:
    request = otlp_request({"service.name": "api", "app.key_id": "k-res", "auth.token.id": "t"})
    assert one(otlp.adapt, request)["token_id"] == "t"
    assert one(otlp.adapt, request, token_attributes=["app.key_id"])["token_id"] == "k-res"
    assert one(otlp.adapt, request)["token_id"] == "t"


def otlp_request(resource: dict[str, str]) -> dict[str, Any]:
    attributes = [{"key": k, "value": {"stringValue": v}} for k, v in resource.items()]
    span = {
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        "spanId": "00f067aa0ba902b7",
        "kind": 1,
        "startTimeUnixNano": "1772442000000000000",
    }
    block = {"resource": {"attributes": attributes}, "scopeSpans": [{"spans": [span]}]}
    return {"resourceSpans": [block]}
