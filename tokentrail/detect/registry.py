"""Every detector, registered once: adding one is one module and one line here."""

from __future__ import annotations

from typing import Final

from tokentrail.detect.boundary import Boundary
from tokentrail.detect.credential_pivot import CredentialPivot
from tokentrail.detect.lifetime import Lifetime
from tokentrail.detect.model import Detector
from tokentrail.detect.scope_drift import ScopeDrift
from tokentrail.detect.shared_token import SharedToken
from tokentrail.detect.token_replay import TokenReplay
from tokentrail.detect.unexpected_reach import UnexpectedReach


class DuplicateDetectorError(ValueError):
    """Two detectors claim one id."""


def register(classes: tuple[type[Detector], ...]) -> dict[str, type[Detector]]:
    """Detectors by id; a duplicate id is an error, as is a module name that differs from it."""
    found: dict[str, type[Detector]] = {}
    for cls in classes:
        if cls.id in found:
            raise DuplicateDetectorError(
                f"detector id {cls.id!r} is used by {found[cls.id].__name__} and {cls.__name__}"
            )
        found[cls.id] = cls
    return found


DETECTORS: Final = register(
    (
        ScopeDrift,
        UnexpectedReach,
        CredentialPivot,
        TokenReplay,
        SharedToken,
        Lifetime,
        Boundary,
    )
)
