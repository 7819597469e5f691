"""Every detector's own examples, and the registry's rules."""

from __future__ import annotations

import pytest

from tokentrail.detect.model import Detector, Example, call
from tokentrail.detect.registry import DETECTORS, DuplicateDetectorError, register
from tokentrail.detect.scope_drift import ScopeDrift

CASES = [
    pytest.param(cls, example, id=f"{detector_id}: {example.name}")
    for detector_id, cls in DETECTORS.items()
    for example in cls.examples
]


@pytest.mark.parametrize(("cls", "example"), CASES)
def test_detector_examples(cls: type[Detector], example: Example) -> None:
    findings = list(cls().detect(list(example.calls)))
    assert bool(findings) == example.fires
    for finding in findings:
        assert finding.detector == cls.id
        assert finding.event_ids and set(finding.event_ids) <= {c.event_id for c in example.calls}


@pytest.mark.parametrize("cls", DETECTORS.values(), ids=list(DETECTORS))
def test_every_detector_has_both_kinds_of_example(cls: type[Detector]) -> None:
    assert any(e.fires for e in cls.examples)
    assert any(not e.fires for e in cls.examples)
    assert cls.__module__.rsplit(".", 1)[-1] == cls.id
    assert cls.mitre and cls.owasp_nhi and cls.runbook


def test_duplicate_ids_are_an_error() -> None:
    class Again(ScopeDrift):
        pass

    with pytest.raises(DuplicateDetectorError, match="scope_drift"):
        register((ScopeDrift, Again))


def test_tuning_overrides_and_unknown_settings() -> None:
    from tokentrail.detect.lifetime import Lifetime

    assert Lifetime(max_ttl_days=7).max_ttl_days == 7.0
    with pytest.raises(ValueError, match="no setting"):
        Lifetime(nonsense=1)


def test_severity_weighs_what_was_reached_not_how_often() -> None:
    from tokentrail.detect.unexpected_reach import UnexpectedReach

    detector = UnexpectedReach()
    many_low = [
        call(target="status-page", sensitivity=1.0, declared=True, allowed_target=False)
        for _ in range(50)
    ]
    one_high = [call(target="payments-db", sensitivity=10.0, privilege="admin",
                     declared=True, allowed_target=False)]  # fmt: skip
    low = max(f.score for f in detector.detect(many_low))
    high = next(iter(detector.detect(one_high)))
    assert high.score > 10 * low
    assert high.severity == "critical"
