"""tokentrail: call-chain audit pipeline and lateral-movement detector for non-human identities."""

__version__ = "0.1.0"
