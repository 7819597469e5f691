"""The service catalog: how much each service and each kind of operation is worth to an attacker.

A catalog is a TOML file (YAML too, when PyYAML is installed) with a sensitivity per service, a
privilege weight per operation class, the scopes that grant access to each service, and the
declared policy of identities. Blast radius scores (DESIGN.md §4) and detectors read it; without
one, every service is worth `DEFAULT_SENSITIVITY` and the default weights apply.

>>> catalog = Catalog.model_validate({"service": [{"name": "payments-db", "sensitivity": 10}]})
>>> catalog.sensitivity("payments-db"), catalog.sensitivity("status-page")
(10, 3)
>>> privilege_of("POST /invoices", "invoices:read"), catalog.weight("admin")
('read', 10.0)
"""

from __future__ import annotations

import hashlib
import importlib
import re
import tomllib
from collections.abc import Iterable
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tokentrail.errors import ConfigError

Privilege = Literal["read", "write", "admin"]
PRIVILEGES: Final[tuple[Privilege, ...]] = ("read", "write", "admin")

# A service the catalog does not name: neither public nor a crown jewel.
DEFAULT_SENSITIVITY: Final = 3


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class PrivilegeWeights(_Model):
    """Weight of each operation class in a score: admin on a service is worth more than a read."""

    read: float = Field(default=1.0, gt=0)
    write: float = Field(default=3.0, gt=0)
    admin: float = Field(default=10.0, gt=0)


class ScoreSettings(_Model):
    """Optional `[score]` table: the factors of the blast radius score (docs/GRAPH.md)."""

    default_sensitivity: int = Field(default=DEFAULT_SENSITIVITY, ge=1, le=10)
    # A target in another environment than the token's home (staging token reaching prod).
    environment_crossing: float = Field(default=2.0, ge=1)
    # A target reached downstream in a chain, by another token: a delegation, not direct use.
    chain: float = Field(default=0.5, gt=0, le=1)


class Service(_Model):
    """One `[[service]]`: its sensitivity (1 public .. 10 crown jewel), scopes that reach it."""

    name: str = Field(min_length=1)
    environment: str | None = None
    sensitivity: int = Field(default=DEFAULT_SENSITIVITY, ge=1, le=10)
    scopes: tuple[str, ...] = ()


class IdentityPolicy(_Model):
    """One `[[identity]]`: what an identity is meant to reach (its declared policy)."""

    name: str = Field(min_length=1)
    kind: Literal["agent", "ci", "service", "user", "unknown"] | None = None
    environment: str | None = None
    allowed_targets: tuple[str, ...] = ()
    allowed_scopes: tuple[str, ...] = ()


class Catalog(_Model):
    """A loaded catalog; `Catalog()` is the empty one with every default."""

    privilege: PrivilegeWeights = PrivilegeWeights()
    score: ScoreSettings = ScoreSettings()
    services: tuple[Service, ...] = Field(default=(), alias="service")
    identities: tuple[IdentityPolicy, ...] = Field(default=(), alias="identity")

    @model_validator(mode="after")
    def _unique_names(self) -> Catalog:
        for kind, names in (
            ("service", [s.name for s in self.services]),
            ("identity", [i.name for i in self.identities]),
        ):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise ValueError(f"{kind} {name!r} is declared twice")
                seen.add(name)
        return self

    @property
    def fingerprint(self) -> str:
        """Names this catalog's content: stored blast scores say which catalog they are for.

        Not cached: `model_copy(update=...)` would carry a cached value over to a copy whose
        content differs.
        """
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @cached_property
    def _services(self) -> dict[str, Service]:
        return {s.name: s for s in self.services}

    @cached_property
    def _identities(self) -> dict[str, IdentityPolicy]:
        return {i.name: i for i in self.identities}

    @cached_property
    def _scope_services(self) -> dict[str, tuple[str, ...]]:
        by_scope: dict[str, list[str]] = {}
        for service in self.services:
            for scope in service.scopes:
                by_scope.setdefault(scope, []).append(service.name)
        return {scope: tuple(names) for scope, names in by_scope.items()}

    def service(self, name: str) -> Service | None:
        return self._services.get(name)

    def identity(self, name: str) -> IdentityPolicy | None:
        return self._identities.get(name)

    def sensitivity(self, name: str) -> int:
        """The service's sensitivity, or the default for a service the catalog does not name."""
        service = self._services.get(name)
        return service.sensitivity if service else self.score.default_sensitivity

    def weight(self, privilege: Privilege) -> float:
        return float(getattr(self.privilege, privilege))

    @property
    def maps_scopes(self) -> bool:
        """Whether any service lists the scopes that grant it (needed for potential reach)."""
        return bool(self._scope_services)

    def services_for_scopes(self, scopes: Iterable[str]) -> dict[str, list[str]]:
        """Service -> the given scopes that grant access to it (the potential reach of a grant).

        >>> Catalog.model_validate({"service": [{"name": "db", "scopes": ["db:read"]}]}
        ...     ).services_for_scopes(["db:read", "mail:send"])
        {'db': ['db:read']}
        """
        granted: dict[str, list[str]] = {}
        for scope in sorted(set(scopes)):
            for name in self._scope_services.get(scope, ()):
                granted.setdefault(name, []).append(scope)
        return granted


def load_catalog(path: str | Path) -> Catalog:
    """Read and check a catalog file; any problem is a `ConfigError` of one line."""
    source = Path(path)
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read catalog {source}: {exc.strerror}") from None
    data: Any
    if source.suffix.lower() in {".yaml", ".yml"}:
        data = _yaml(source, text)
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"catalog {source} is not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"catalog {source} must be a table of [privilege], [[service]] ...")
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "catalog"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"catalog {source}: {where}: {message}") from None


def _yaml(source: Path, text: str) -> Any:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        raise ConfigError(f"catalog {source}: YAML needs PyYAML installed; or use TOML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"catalog {source} is not valid YAML: {first}") from None


# --- operation classes ------------------------------------------------------------------------

_READ: Final = 0
_WRITE: Final = 1
_ADMIN: Final = 2

_HTTP: Final = re.compile(
    r"^(GET|HEAD|OPTIONS|TRACE|POST|PUT|PATCH|DELETE|CONNECT)\b\s*(.*)$", re.I
)
_HTTP_READ: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# `service:Action` (AWS, GCP-style IAM permissions) or `pkg.Service/Method`, `Service.Method`.
_ACTION: Final = re.compile(r"^(?:([A-Za-z0-9_-]+):)?(?:[\w./-]*[./])?([A-Za-z]+)\w*$")
_WORDS: Final = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _verbs(text: str) -> frozenset[str]:
    return frozenset(text.split())


_READ_VERBS: Final = _verbs(
    "get list describe head lookup search query scan select batchget check view read fetch"
    " show count find retrieve download export filter watch stat simulate"
)
_WRITE_VERBS: Final = _verbs(
    "create put update delete attach detach modify set add remove start stop run send invoke"
    " terminate reboot copy restore tag untag upload import enable disable associate"
    " disassociate register deregister publish execute authorize revoke reset replace cancel"
    " write insert upsert merge patch post drop truncate alter rotate encrypt decrypt sign"
    " generate batchwrite batchdelete apply deploy assume abort accept reject approve confirm"
    " change move rename assign unassign grant share schedule submit scale resize purge lock"
    " unlock issue leave join invite"
)
# Namespaces whose changes are identity management: a write there is administration.
_ADMIN_SERVICES: Final = frozenset(
    {"iam", "sts", "organizations", "sso", "sso-admin", "identitystore", "accessanalyzer"}
)
# STS calls that only tell who the caller is; everything else there mints credentials.
_STS_READS: Final = frozenset(
    {"GetCallerIdentity", "GetAccessKeyInfo", "DecodeAuthorizationMessage"}
)
# Nouns of identity and permission management, in an action or a route.
_IAM_NOUNS: Final = re.compile(
    r"polic(?:y|ies)|roles?|users?|groups?|permissions?|accesskeys?|access-keys?|api-?keys?"
    r"|service-?accounts?|credentials?|loginprofiles?|grants?|passrole|acls?",
    re.I,
)


def _word(alternatives: str) -> re.Pattern[str]:
    """A case-insensitive whole word (between non-letters) out of `a|b|c`."""
    return re.compile(rf"(?:^|[^a-z])(?:{alternatives})(?:$|[^a-z])", re.I)


_ADMIN_WORD: Final = _word("admin|administrator|superuser|root|owner")
_SCOPE_WRITE: Final = _word("write|readwrite|read_write|rw|full")
_SCOPE_READ: Final = _word("read|readonly|read_only|ro|view")


def privilege_of(operation: str, scope: str | None) -> Privilege:
    """The operation class of a call: `read`, `write` or `admin`.

    Admin wins wherever it shows: `admin` in the scope or route, IAM/STS changes, credential
    minting, and writes to policies, roles, users and keys. Otherwise a scope that names its class
    (`:read`, `:write`) decides, as the permission the call exercised; then the operation's verb
    (HTTP method, `s3:GetObject`, gRPC method). An unknown verb counts as a read.

    >>> privilege_of("GET /invoices/42", None), privilege_of("DELETE /invoices/42", None)
    ('read', 'write')
    >>> privilege_of("s3:GetObject", None), privilege_of("s3:PutObject", None)
    ('read', 'write')
    >>> privilege_of("sts:AssumeRole", None), privilege_of("iam:CreateAccessKey", None)
    ('admin', 'admin')
    >>> privilege_of("GET /admin/settings", None), privilege_of("GET /x", "payments:admin")
    ('admin', 'admin')
    >>> privilege_of("POST /search", "catalog:read"), privilege_of("GET /x", "ledger:write")
    ('read', 'write')
    """
    return PRIVILEGES[_classify(operation, scope or "")]


@lru_cache(maxsize=65_536)
def _classify(operation: str, scope: str) -> int:
    op = operation.strip()
    if _ADMIN_WORD.search(scope):
        return _ADMIN
    verb_class, admin = _operation(op)
    if admin:
        return _ADMIN
    if _SCOPE_WRITE.search(scope):
        return _WRITE
    if _SCOPE_READ.search(scope):
        return _READ
    return verb_class


def _operation(op: str) -> tuple[int, bool]:
    """(class of the verb, whether the operation is administration) for one operation string."""
    http = _HTTP.match(op)
    if http:
        method, route = http.group(1).upper(), http.group(2)
        verb = _READ if method in _HTTP_READ else _WRITE
        segments = [s for s in re.split(r"[/?#]", route) if s]
        admin = any(_ADMIN_WORD.fullmatch(s) for s in segments) or (
            verb == _WRITE and any(_IAM_NOUNS.fullmatch(s) for s in segments)
        )
        return verb, admin
    action = _ACTION.match(op)
    if not action:
        return _READ, bool(_ADMIN_WORD.search(op))
    namespace = (action.group(1) or "").lower()
    name = op.rsplit(":", 1)[-1].rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    words = _WORDS.findall(name)
    first = words[0].lower() if words else ""
    verb = _WRITE if first in _WRITE_VERBS else _READ
    if first in ("batch",) and len(words) > 1:
        verb = _READ if words[1].lower() in _READ_VERBS else _WRITE
    if namespace == "sts":
        return verb, name not in _STS_READS
    if namespace in _ADMIN_SERVICES or _ADMIN_WORD.search(name):
        # Anything there that is not plainly a read changes who may do what.
        return verb, first not in _READ_VERBS
    managed = verb == _WRITE and any(_IAM_NOUNS.fullmatch(w) for w in words[1:])
    return verb, managed
