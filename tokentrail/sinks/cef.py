"""An alert as one ArcSight CEF line (`CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|Ext`).

Escaping follows the CEF specification (Micro Focus "Implementing ArcSight CEF", rev. 25):
in header fields `\\` and `|` are escaped and line breaks become spaces; in extension values
`\\` and `=` are escaped and line breaks become `\\n` / `\\r`. Extension keys are standard CEF
keys; tokentrail's own fields use the `csN`/`cnN`/`cfpN` slots with their `…Label` keys.

>>> line = cef_line(example_alert(title="a|b"))
>>> line.split("|")[:4]
['CEF:0', 'tokentrail', 'tokentrail', '0.1.0']
"""

from __future__ import annotations

from typing import Final

from tokentrail import __version__
from tokentrail.sinks.ocsf import example_alert
from tokentrail.store.alerts import AlertRow

# CEF severity is 0-10; syslog severity follows from it (RFC 5424 codes).
CEF_SEVERITY: Final = {"info": 1, "low": 3, "medium": 5, "high": 8, "critical": 10}
SYSLOG_SEVERITY: Final = {"info": 6, "low": 5, "medium": 4, "high": 3, "critical": 2}

__all__ = [
    "CEF_SEVERITY",
    "SYSLOG_SEVERITY",
    "cef_line",
    "escape_extension",
    "escape_header",
    "example_alert",
]


def escape_header(value: str) -> str:
    """A CEF header field: backslash and pipe escaped, no line breaks.

    >>> escape_header("a|b\\\\c")
    'a\\\\|b\\\\\\\\c'
    """
    text = value.replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def escape_extension(value: str) -> str:
    """A CEF extension value: backslash and equals escaped, line breaks as `\\n`, `\\r`.

    >>> escape_extension("k=v")
    'k\\\\=v'
    """
    text = value.replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def cef_line(alert: AlertRow, *, version_us: int | None = None) -> str:
    """The alert as one CEF line (no syslog header): the detector is the signature id.

    Times (`start`, `end`, `rt`) are epoch milliseconds of event time; `rt` is the alert
    version's time when `version_us` is given.
    """
    header = [
        "CEF:0",
        escape_header("tokentrail"),
        escape_header("tokentrail"),
        escape_header(__version__),
        escape_header(alert.detector),
        escape_header(alert.title),
        str(CEF_SEVERITY.get(alert.severity, 5)),
    ]
    labelled = [
        ("cs1", "tokenId", alert.token_id),
        ("cs2", "targets", ",".join(alert.targets)),
        ("cs3", "mitreAttack", ",".join(alert.mitre)),
        ("cs4", "owaspNhi", ",".join(alert.owasp_nhi)),
        ("cs5", "status", alert.status),
        ("cs6", "eventIds", ",".join(alert.event_ids)),
        ("cfp1", "score", alert.score),
    ]
    ext: list[tuple[str, str | int | float | None]] = [
        ("externalId", alert.alert_id),
        ("cat", alert.detector),
        ("rt", (version_us if version_us is not None else alert.last_seen_us) // 1000),
        ("start", alert.first_seen_us // 1000),
        ("end", alert.last_seen_us // 1000),
        ("cnt", alert.occurrences),
        ("suser", alert.identity),
        ("dhost", alert.targets[0] if alert.targets else None),
        ("src", _source_ip(alert)),
    ]
    for key, label, value in labelled:
        if value is not None and value != "":
            ext += [(f"{key}Label", label), (key, value)]
    ext.append(("msg", alert.runbook))
    extension = " ".join(
        f"{key}={escape_extension(str(value))}"
        for key, value in ext
        if value is not None and value != ""
    )
    return "|".join(header) + "|" + extension


def _source_ip(alert: AlertRow) -> str | None:
    for key in ("new_source_ip", "source_ip"):
        value = alert.evidence.get(key)
        if isinstance(value, str) and value:
            return value
    return None
