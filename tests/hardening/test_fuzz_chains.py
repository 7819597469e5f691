"""Property-based fuzzing of the chain builder on arbitrary parent/child structures.

Spans are drawn from a handful of ids, so cycles, self-parents, duplicate span ids, missing
parents and span-less events all turn up. Properties: `build_chain` never raises; every input
event is a span of the chain or listed as a duplicate copy; orphans are exactly the spans whose
parent never arrived; every span below another is one level deeper; a loop is reported.
"""

from __future__ import annotations

from fuzz_inputs import FUZZ
from hypothesis import given, settings
from hypothesis import strategies as st

from tokentrail.graph.chains import build_chain, hop
from tokentrail.store.graph import HopRow

IDS = ["a", "b", "c", "d", "e"]


@st.composite
def hops(draw: st.DrawFn) -> list[HopRow]:
    rows = []
    for n in range(draw(st.integers(0, 12))):
        span = draw(st.sampled_from([*IDS, None]))
        parent = draw(st.sampled_from([*IDS, "missing", None]))
        rows.append(
            hop(
                span,
                parent,
                draw(st.sampled_from(["gw", "api", "db"])),
                draw(st.sampled_from(["api", "db", "cache"])),
                draw(st.sampled_from(["tok-1", "tok-2"])),
                ts_us=1_772_442_000_000_000 + draw(st.integers(0, 3)),
                event_id=f"ev-{n}",
            )
        )
    return rows


@settings(FUZZ, max_examples=300)  # no I/O: cheap
@given(hops())
def test_chains_never_raise_and_account_for_every_event(rows: list[HopRow]) -> None:
    chain = build_chain("t", rows)
    copies = [e for d in chain.duplicates for e in d.other_event_ids]
    kept = [s.event_id for s in chain.spans]
    assert sorted(kept + copies) == sorted(r.event_id for r in rows)
    assert len(set(kept)) == len(kept)
    span_ids = {s.span_id for s in chain.spans if s.span_id is not None}
    orphans = {o.event_id for o in chain.orphans}
    assert orphans == {
        s.event_id for s in chain.spans if s.parent_span_id and s.parent_span_id not in span_ids
    }
    by_id = {s.span_id: s for s in chain.spans if s.span_id is not None}
    for s in chain.spans:
        parent = by_id.get(s.parent_span_id) if s.parent_span_id else None
        if parent is not None and not s.cycle and parent is not s:
            assert s.depth == parent.depth + 1
    for path in chain.paths:
        assert path.count >= 1 and len(path.services) == len(path.tokens) + 1
    chain.to_json()  # every result can be sent as the API sends it


def test_self_parent_and_two_span_loop_are_reported_as_cycles() -> None:
    chain = build_chain(
        "t",
        [
            hop("a", "a", "gw", "api", "tok-1"),
            hop("b", "c", "api", "db", "tok-1", ts_us=1_772_442_000_000_001),
            hop("c", "b", "db", "cache", "tok-2", ts_us=1_772_442_000_000_002),
        ],
    )
    assert sorted(sorted(c) for c in chain.cycles) == [["a"], ["b", "c"]]
    assert [s.span_id for s in chain.spans if s.cycle] == ["a", "b"]
    assert len(chain.spans) == 3
