"""The estate: services per environment, the identities that call them, and their tokens.

Everything a benign generator may do is declared here first. Declaring a call (`_allow`) also
records it in the calling identity's policy, so the declared policy written to `catalog.toml`
is, by construction, exactly what benign traffic uses: benign never violates it, attacks do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from tokentrail.simulate.core import (
    HOUR,
    MINUTE,
    SimulationError,
    Token,
    lane_rng,
    stable_hex,
)

ENVIRONMENTS: Final = ("prod", "staging", "dev")
CI: Final = "ci"
APP: Final = ENVIRONMENTS
PROD: Final = ("prod",)
CI_ONLY: Final = (CI,)

# Workload tokens (JWT-SVIDs) are re-issued every 45 minutes and live an hour, so the old
# token is always still valid at the switch: rotation never makes benign calls use expired ones.
ROTATE_MS: Final = 45 * MINUTE
SVID_TTL_MS: Final = HOUR

PRIVILEGE: Final = (("read", 1.0), ("write", 3.0), ("admin", 10.0))


@dataclass(frozen=True)
class Service:
    """One entry of the service catalog."""

    name: str
    base: str
    environment: str
    sensitivity: int
    scopes: tuple[str, ...]


# base name, sensitivity in prod (1 public .. 10 crown jewel), scopes granting access, where.
_SERVICES: Final[tuple[tuple[str, int, tuple[str, ...], tuple[str, ...]], ...]] = (
    ("edge-gateway", 3, ("edge:route",), APP),
    ("orders-api", 6, ("checkout:read", "checkout:write"), APP),
    ("payments-api", 8, ("charges:read", "charges:write"), APP),
    ("customers-api", 7, ("profiles:read", "profiles:write"), APP),
    ("inventory-api", 4, ("catalog:read", "catalog:write"), APP),
    ("search-api", 3, ("search:read",), APP),
    ("notifications", 3, ("notify:write",), APP),
    ("hr-api", 8, ("people:read", "people:write"), APP),
    ("ledger-api", 8, ("ledger:read", "ledger:write"), APP),
    ("fraud-api", 6, ("fraud:read", "fraud:write"), ("prod", "staging")),
    ("newsletter", 2, (), ("prod", "staging")),
    ("reports-worker", 3, (), PROD),
    ("payments-db", 10, ("payments:read", "payments:write", "payments:admin"), APP),
    ("customers-db", 9, ("customers:read", "customers:write", "customers:admin"), APP),
    ("orders-db", 7, ("orders:read", "orders:write", "orders:admin"), APP),
    ("inventory-db", 4, ("inventory:read", "inventory:write", "inventory:admin"), APP),
    ("hr-db", 10, ("hr:read", "hr:write", "hr:admin"), APP),
    ("ledger-db", 9, ("books:read", "books:write", "books:admin"), APP),
    ("search-index", 3, ("index:read", "index:write"), APP),
    ("email-relay", 3, ("email:send",), APP),
    ("reports-bucket", 6, ("reports:read", "reports:write"), PROD),
    ("secrets-vault", 10, ("secrets:read", "secrets:write", "secrets:admin"), APP),
    ("config-service", 4, ("config:read", "config:write"), APP),
    ("cluster-api", 9, ("cluster:read", "cluster:deploy", "cluster:admin"), APP),
    ("iam", 10, ("iam:read", "iam:admin"), PROD),
    ("sts", 9, ("sts:assume-role",), PROD),
    ("token-service", 9, ("token:exchange",), PROD),
    ("tool-gateway", 6, ("tools:invoke",), PROD),
    ("crm-api", 7, ("crm:read", "crm:write", "crm:export", "crm:admin"), PROD),
    ("tickets-api", 4, ("tickets:read", "tickets:write"), PROD),
    ("kb-api", 2, ("kb:read",), PROD),
    ("status-page", 1, ("status:read",), PROD),
    ("git-server", 7, ("repo:read", "repo:write"), CI_ONLY),
    ("artifact-registry", 8, ("registry:pull", "registry:push"), CI_ONLY),
    ("build-cache", 3, ("cache:read", "cache:write"), CI_ONLY),
    ("ci-secrets", 8, ("ci-secrets:read", "ci-secrets:write"), CI_ONLY),
)

# Kubernetes namespace and prod instance count (at scale 1) of each workload that makes calls.
_WORKLOADS: Final = {
    "edge-gateway": ("edge", 3),
    "orders-api": ("orders", 3),
    "payments-api": ("payments", 2),
    "customers-api": ("customers", 2),
    "inventory-api": ("inventory", 2),
    "search-api": ("search", 2),
    "notifications": ("notifications", 1),
    "hr-api": ("hr", 1),
    "ledger-api": ("billing", 1),
    "fraud-api": ("risk", 1),
    "newsletter": ("marketing", 1),
    "reports-worker": ("analytics", 1),
    "tool-gateway": ("gateway", 2),
}
_ENV_OCTET: Final = {"prod": 20, "staging": 30, "dev": 40, CI: 50}
_SENSITIVITY_DROP: Final = {"prod": 0, "staging": 4, "dev": 6, CI: 0}


def env_name(base: str, environment: str) -> str:
    """Catalog name of a service in an environment: prod and CI keep the bare name."""
    return base if environment in ("prod", CI) else f"{base}-{environment}"


@dataclass(eq=False)
class Identity:
    """A workload identity and its policy: what its benign traffic is declared to reach."""

    name: str
    kind: str
    environment: str
    workload: str
    user_agent: str
    declared: bool = True
    targets: set[str] = field(default_factory=set)
    scopes: set[str] = field(default_factory=set)

    def allow(self, target: str, scope: str | None) -> None:
        self.targets.add(target)
        if scope is not None:
            self.scopes.add(scope)

    def grant(self) -> tuple[str, ...]:
        """The scopes its workload tokens carry: exactly its policy (least privilege)."""
        return tuple(sorted(self.scopes))


@dataclass(eq=False)
class Instance:
    """One replica of a workload: its own address and its own rotating token series."""

    key: str
    identity: Identity
    ip: str
    phase_ms: int
    active_from: int
    active_until: int
    seed: int
    _cached: tuple[int, Token] | None = None

    def switch_ms(self, n: int) -> int:
        """When token `n` replaces token `n - 1` (the rotation event of this instance)."""
        return self.phase_ms + n * ROTATE_MS

    def token_at(self, ts: int) -> Token:
        """The token in use at `ts`; a token is used only strictly after its switch."""
        cached = self._cached
        if cached is not None and cached[1].issued_ms < ts <= cached[1].issued_ms + ROTATE_MS:
            return cached[1]
        return self.token((ts - self.phase_ms - 1) // ROTATE_MS)

    def token(self, n: int) -> Token:
        """Token number `n` of this instance's rotation series."""
        cached = self._cached
        if cached is not None and cached[0] == n:
            return cached[1]
        issued = self.switch_ms(n)
        token = Token(
            token_id=f"svid-{stable_hex(self.seed, self.key, n)}",
            kind="jwt-svid",
            scopes=self.identity.grant(),
            issued_ms=issued,
            expires_ms=issued + SVID_TTL_MS,
            audience=f"{self.identity.environment}.mesh.acme.internal",
        )
        self._cached = (n, token)
        return token

    def active(self, ts: int) -> bool:
        return self.active_from < ts < self.active_until


@dataclass(eq=False)
class Workload:
    """A service deployed in one environment, with its identity and instances."""

    service: Service
    identity: Identity
    namespace: str
    instances: list[Instance]

    def live(self, begin: int, end: int) -> list[Instance]:
        """Instances active during the whole of [begin, end)."""
        return [i for i in self.instances if i.active_from < begin and end <= i.active_until]


@dataclass(frozen=True, eq=False, slots=True)
class Hop:
    """One call of a request chain and the calls it makes in turn."""

    caller: Workload
    target: str
    callee: Workload | None
    operation: str
    scope: str
    resource: str | None
    bytes_out: int
    status: int
    children: tuple[Hop, ...]
    active_from: int

    @property
    def identity(self) -> Identity:
        return self.caller.identity


@dataclass(frozen=True, eq=False)
class ChainTemplate:
    name: str
    weight: float
    root: Hop
    office_only: bool = False


@dataclass(frozen=True, eq=False)
class WorkerRoutine:
    """A request chain a background worker starts on its own, every `period_ms`."""

    name: str
    root: Hop
    period_ms: int
    hours: tuple[int, int]


@dataclass(frozen=True)
class ToolCall:
    operation: str
    scope: str
    resource: str | None
    bytes_out: int


@dataclass(frozen=True)
class Tool:
    name: str
    target: str
    calls: tuple[ToolCall, ...]

    def scopes(self) -> tuple[str, ...]:
        return tuple(sorted({c.scope for c in self.calls}))


@dataclass(eq=False)
class Agent:
    """One AI agent identity: its tools (some only from a given time) and who asks it."""

    kind: str
    identity: Identity
    ip: str
    tools: list[tuple[Tool, int]]
    requesters: tuple[str, ...]
    tasks_per_hour: float
    task_ttl_ms: int

    def tools_at(self, ts: int) -> list[Tool]:
        return [tool for tool, since in self.tools if since <= ts]


@dataclass(eq=False)
class Repo:
    """A source repository with its CI identities (build, pull request, deploy per env)."""

    name: str
    namespace: str | None
    deployment: str | None
    active_from: int
    main: Identity
    pull_request: Identity
    deployers: dict[str, Identity]


@dataclass(frozen=True)
class BatchStep:
    target: str
    operation: str
    scope: str
    resource: str | None
    pages: int
    bytes_out: int


@dataclass(eq=False)
class BatchJob:
    name: str
    identity: Identity
    hour: float
    weekdays_only: bool
    steps: tuple[BatchStep, ...]


@dataclass(eq=False)
class Partner:
    """A legacy integration with a long-lived API key and no declared policy."""

    identity: Identity
    token: Token
    ip: str
    calls: tuple[tuple[str, str, str, int, int], ...]  # target, operation, scope, period, bytes


@dataclass(eq=False)
class Operator:
    """A human SRE using kubectl with single-sign-on tokens during office hours."""

    identity: Identity
    ip: str


@dataclass(frozen=True)
class ChangePlan:
    """When the benign changes happen (ms since epoch); see `changes.py`."""

    new_pipeline_ms: int
    fraud_live_ms: int
    new_dependency_ms: int
    new_agent_tool_ms: int
    scale_out_ms: int
    scale_out_until_ms: int


# Routes the mesh serves: (caller, target, operation, scope, resource kind, bytes, children).
HopDef = tuple[str, str, str, str, str | None, int, tuple["HopDef", ...]]


def _h(
    caller: str,
    target: str,
    operation: str,
    scope: str,
    resource: str | None = None,
    size: int = 2000,
    *children: HopDef,
) -> HopDef:
    return (caller, target, operation, scope, resource, size, tuple(children))


_FRAUD_HOP: Final = _h("orders-api", "fraud-api", "POST /v1/scores", "fraud:write", "order", 300)

_CHAINS: Final[tuple[tuple[str, float, bool, HopDef], ...]] = (
    ("browse", 30, False, _h(
        "edge-gateway", "search-api", "GET /v1/search", "search:read", None, 6000,
        _h("search-api", "search-index", "GET /indexes/products/_search", "index:read",
           None, 14000),
    )),
    ("product", 25, False, _h(
        "edge-gateway", "inventory-api", "GET /v1/items/{id}", "catalog:read", "item", 3000,
        _h("inventory-api", "inventory-db", "GET /items/{id}", "inventory:read", "item", 900),
    )),
    ("order_status", 14, False, _h(
        "edge-gateway", "orders-api", "GET /v1/orders/{id}", "checkout:read", "order", 2500,
        _h("orders-api", "orders-db", "GET /orders/{id}", "orders:read", "order", 1200),
    )),
    ("account", 11, False, _h(
        "edge-gateway", "customers-api", "GET /v1/customers/{id}", "profiles:read", "customer",
        2200,
        _h("customers-api", "customers-db", "GET /customers/{id}", "customers:read",
           "customer", 1100),
    )),
    ("checkout", 10, False, _h(
        "edge-gateway", "orders-api", "POST /v1/orders", "checkout:write", "order", 1800,
        _h("orders-api", "inventory-api", "POST /v1/reservations", "catalog:write", "item", 400,
           _h("inventory-api", "inventory-db", "PUT /stock/{id}", "inventory:write", "item",
              200)),
        _h("orders-api", "payments-api", "POST /v1/charges", "charges:write", "order", 700,
           _h("payments-api", "payments-db", "POST /charges", "payments:write", "order", 300),
           _h("payments-api", "ledger-api", "POST /v1/entries", "ledger:write", "order", 300,
              _h("ledger-api", "ledger-db", "POST /entries", "books:write", "order", 200))),
        _h("orders-api", "orders-db", "POST /orders", "orders:write", "order", 300),
        _h("orders-api", "notifications", "POST /v1/messages", "notify:write", "customer", 200,
           _h("notifications", "email-relay", "POST /v3/mail/send", "email:send", "customer",
              150)),
    )),
    ("profile_update", 3, False, _h(
        "edge-gateway", "customers-api", "PATCH /v1/customers/{id}", "profiles:write",
        "customer", 900,
        _h("customers-api", "customers-db", "PUT /customers/{id}", "customers:write",
           "customer", 300),
    )),
    ("invoice", 4, False, _h(
        "edge-gateway", "ledger-api", "GET /v1/invoices/{id}", "ledger:read", "invoice", 4000,
        _h("ledger-api", "ledger-db", "GET /invoices/{id}", "books:read", "invoice", 2500),
    )),
    ("hr_portal", 3, True, _h(
        "edge-gateway", "hr-api", "GET /v1/employees/{id}", "people:read", "employee", 2600,
        _h("hr-api", "hr-db", "GET /employees/{id}", "hr:read", "employee", 1400),
    )),
)  # fmt: skip

# Background routines: (name, envs, root hop, period, active hours UTC).
_ROUTINES: Final[tuple[tuple[str, tuple[str, ...], HopDef, int, tuple[int, int]], ...]] = (
    ("newsletter_send", ("prod", "staging"), _h(
        "newsletter", "customers-api", "GET /v1/segments/{id}/members", "profiles:read",
        "segment", 42000,
        _h("customers-api", "customers-db", "GET /customers?segment={id}", "customers:read",
           "segment", 38000),
    ), 10 * MINUTE, (7, 20)),
    ("newsletter_mail", ("prod", "staging"), _h(
        "newsletter", "email-relay", "POST /v3/mail/send", "email:send", "segment", 300,
    ), 10 * MINUTE, (7, 20)),
    ("reports_rollup", PROD, _h(
        "reports-worker", "orders-db", "GET /orders?since={id}", "orders:read", "cursor",
        56000,
    ), 5 * MINUTE, (0, 24)),
    ("reports_write", PROD, _h(
        "reports-worker", "reports-bucket", "s3:PutObject", "reports:write", "report", 120,
    ), 5 * MINUTE, (0, 24)),
)  # fmt: skip


def _tool(name: str, target: str, *calls: tuple[str, str, str | None, int]) -> Tool:
    return Tool(name, target, tuple(ToolCall(*c) for c in calls))


TOOLS: Final = {
    "tickets": _tool(
        "tickets", "tickets-api",
        ("GET /v2/tickets/{id}", "tickets:read", "ticket", 5200),
        ("POST /v2/tickets/{id}/comments", "tickets:write", "ticket", 300),
    ),
    "kb": _tool("kb", "kb-api", ("GET /v1/articles/search", "kb:read", None, 8000)),
    "crm": _tool(
        "crm", "crm-api",
        ("GET /v1/accounts/{id}", "crm:read", "account", 3600),
        ("GET /v1/opportunities", "crm:read", None, 9000),
    ),
    "crm_update": _tool(
        "crm_update", "crm-api", ("PATCH /v1/opportunities/{id}", "crm:write", "opportunity", 400)
    ),
    "reports": _tool(
        "reports", "reports-bucket",
        ("s3:ListBucket", "reports:read", "bucket", 2000),
        ("s3:GetObject", "reports:read", "report", 90000),
    ),
    "ledger": _tool("ledger", "ledger-api", ("GET /v1/entries", "ledger:read", "period", 30000)),
    "cluster": _tool(
        "cluster", "cluster-api",
        ("GET /api/v1/namespaces/{ns}/pods", "cluster:read", "namespace", 12000),
        ("GET /api/v1/namespaces/{ns}/events", "cluster:read", "namespace", 9000),
    ),
    "status": _tool("status", "status-page", ("GET /api/v2/incidents", "status:read", None, 1500)),
}  # fmt: skip

# Agent kind: tools, requesters' pool size, tasks per hour (scale 1), task token TTL minutes.
_AGENTS: Final = {
    "support-triage": (("tickets", "kb", "crm"), 6, 9.0, 15),
    "sales-assistant": (("crm", "crm_update", "kb"), 5, 7.0, 15),
    "finops-analyst": (("reports", "ledger"), 3, 3.0, 30),
    "oncall-assistant": (("cluster", "status", "tickets"), 4, 4.0, 15),
}
NEW_AGENT_TOOL: Final = ("support-triage", "status")

_REPOS: Final = (
    ("orders", "orders", "orders-api"),
    ("payments", "payments", "payments-api"),
    ("customers", "customers", "customers-api"),
    ("inventory", "inventory", "inventory-api"),
    ("search", "search", "search-api"),
    ("notifications", "notifications", "notifications"),
    ("hr", "hr", "hr-api"),
    ("ledger", "billing", "ledger-api"),
    ("web", "edge", "edge-gateway"),
    ("newsletter", "marketing", "newsletter"),
    ("agents", "gateway", "tool-gateway"),
)
NEW_REPO: Final = ("fraud", "risk", "fraud-api")

_FIRST: Final = ("alice", "bob", "chen", "dara", "emeka", "farah", "goran", "hana", "ines", "jonas")
_LAST: Final = ("ortiz", "nakamura", "okafor", "lindqvist", "haddad", "novak", "silva", "kim")

# Nightly jobs: name, hour UTC, weekdays only, declared, steps (target, op, scope, resource,
# pages per run at scale 1, bytes per page).
_BATCH: Final[tuple[tuple[str, float, bool, bool, tuple[BatchStep, ...]], ...]] = (
    ("db-backup", 0.5, False, True, tuple(
        BatchStep(db, "POST /admin/snapshots", f"{scope}:admin", f"snapshot/{db}", 1, 400)
        for db, scope in (
            ("payments-db", "payments"), ("customers-db", "customers"), ("orders-db", "orders"),
            ("inventory-db", "inventory"), ("hr-db", "hr"), ("ledger-db", "books"),
        )
    )),
    ("ledger-reconcile", 1.25, False, True, (
        BatchStep("payments-db", "GET /charges", "payments:read", "cursor", 40, 180000),
        BatchStep("ledger-db", "GET /entries", "books:read", "cursor", 40, 150000),
        BatchStep("ledger-api", "POST /v1/reconciliations", "ledger:write", "period", 1, 600),
    )),
    ("payroll-export", 2.0, True, True, (
        BatchStep("hr-db", "GET /payroll", "hr:read", "cursor", 15, 120000),
        BatchStep("reports-bucket", "s3:PutObject", "reports:write", "report", 1, 200),
    )),
    ("customer-analytics", 3.0, False, True, (
        BatchStep("customers-db", "GET /customers", "customers:read", "cursor", 30, 200000),
        BatchStep("orders-db", "GET /orders", "orders:read", "cursor", 30, 200000),
        BatchStep("reports-bucket", "s3:PutObject", "reports:write", "report", 1, 200),
    )),
    ("search-reindex", 4.0, False, False, (
        BatchStep("inventory-db", "GET /items", "inventory:read", "cursor", 25, 160000),
        BatchStep("search-index", "POST /_bulk", "index:write", "index", 25, 300),
    )),
)  # fmt: skip


class Estate:
    """The whole simulated organisation at a given scale, built deterministically from a seed."""

    def __init__(
        self, *, seed: int, scale: float, start_ms: int, end_ms: int, changes: ChangePlan
    ) -> None:
        if scale <= 0:
            raise SimulationError(f"scale must be positive, got {scale:g}")
        self.seed = seed
        self.scale = scale
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.changes = changes
        self._rng = lane_rng(seed, "estate")
        self._ips: dict[str, int] = {}
        self.services: dict[str, Service] = {}
        self.identities: dict[str, Identity] = {}
        self.workloads: dict[str, Workload] = {}
        self.chains: dict[str, list[ChainTemplate]] = {env: [] for env in ENVIRONMENTS}
        self.routines: dict[str, list[WorkerRoutine]] = {env: [] for env in ENVIRONMENTS}
        self.agents: list[Agent] = []
        self.repos: list[Repo] = []
        self.batch_jobs: list[BatchJob] = []
        self.partners: list[Partner] = []
        self.operators: list[Operator] = []
        self._build_services()
        self._build_workloads()
        self._build_chains()
        self._build_agents()
        self._build_repos()
        self._build_batch()
        self._build_partners_and_operators()

    # -- lookups used by generators and attacks ------------------------------------------------

    def service(self, base: str, environment: str) -> Service:
        return self.services[env_name(base, environment)]

    def workload(self, base: str, environment: str = "prod") -> Workload:
        try:
            return self.workloads[env_name(base, environment)]
        except KeyError:
            raise SimulationError(f"no workload {base!r} in {environment}") from None

    def agent(self, kind: str) -> Agent:
        for agent in self.agents:
            if agent.kind == kind:
                return agent
        raise SimulationError(f"no agent of kind {kind!r}")

    def repo(self, name: str) -> Repo:
        for repo in self.repos:
            if repo.name == name:
                return repo
        raise SimulationError(f"no repository {name!r}")

    def batch_job(self, name: str) -> BatchJob:
        for job in self.batch_jobs:
            if job.name == name:
                return job
        raise SimulationError(f"no batch job {name!r}")

    def ip(self, pool: int) -> str:
        """A fresh private address in pool `pool` (10.<pool>.x.y), never handed out twice."""
        n = self._ips.get(str(pool), 0)
        self._ips[str(pool)] = n + 1
        return f"10.{pool}.{n // 250}.{n % 250 + 2}"

    def instance_count(self, base_count: int, environment: str) -> int:
        if environment == "prod":
            return max(1, round(base_count * self.scale))
        return max(1, round(math.sqrt(self.scale)))

    # -- construction --------------------------------------------------------------------------

    def _identity(self, name: str, kind: str, environment: str, workload: str, ua: str,
                  *, declared: bool = True) -> Identity:  # fmt: skip
        identity = Identity(name, kind, environment, workload, ua, declared)
        self.identities[name] = identity
        return identity

    def _build_services(self) -> None:
        for base, sensitivity, scopes, envs in _SERVICES:
            for env in envs:
                name = env_name(base, env)
                level = max(1, sensitivity - _SENSITIVITY_DROP[env])
                self.services[name] = Service(name, base, env, level, scopes)

    def _build_workloads(self) -> None:
        rng = self._rng
        for name, service in self.services.items():
            if service.base not in _WORKLOADS:
                continue
            env = service.environment
            namespace, base_count = _WORKLOADS[service.base]
            version = f"{rng.randint(1, 4)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
            identity = self._identity(
                f"spiffe://{env}/ns/{namespace}/sa/{service.base}",
                "service",
                env,
                name,
                f"{service.base}/{version} (acme-svc-sdk/5.2; python/3.12)",
                # Teams declare policy in prod and staging; dev is the usual gap.
                declared=env != "dev",
            )
            active_from = self.start_ms
            if service.base == "fraud-api":
                live = self.changes.fraud_live_ms
                active_from = live if env == "prod" else live - 2 * HOUR
            workload = Workload(service, identity, namespace, [])
            for i in range(self.instance_count(base_count, env)):
                workload.instances.append(self._instance(workload, i, active_from, self.end_ms))
            self.workloads[name] = workload
            self._housekeeping_policy(workload)
        self._scale_out()

    def _instance(self, workload: Workload, i: int, active_from: int, until: int) -> Instance:
        env = workload.service.environment
        # A new instance rotates from the moment it starts; the first ones start with the world.
        phase = (
            self._rng.randrange(ROTATE_MS)
            if active_from == self.start_ms
            else (active_from - self.start_ms) % ROTATE_MS
        )
        return Instance(
            key=f"{workload.service.name}/{i}",
            identity=workload.identity,
            ip=self.ip(_ENV_OCTET[env]),
            phase_ms=self.start_ms + phase,
            active_from=active_from,
            active_until=until,
            seed=self.seed,
        )

    def _scale_out(self) -> None:
        """The autoscaler doubles search-api in prod for the scale-out window."""
        search = self.workload("search-api")
        begin, until = self.changes.scale_out_ms, self.changes.scale_out_until_ms
        count = len(search.instances)
        for i in range(count, 2 * count):
            offset = self._rng.randrange(3 * MINUTE)
            search.instances.append(self._instance(search, i, begin + offset, until))

    def _housekeeping_policy(self, workload: Workload) -> None:
        env = workload.service.environment
        workload.identity.allow(env_name("secrets-vault", env), "secrets:read")
        workload.identity.allow(env_name("config-service", env), "config:read")

    def _compile(self, hop: HopDef, env: str, active_from: int) -> Hop:
        caller, target, operation, scope, resource, size, children = hop
        caller_workload = self.workload(caller, env)
        target_name = env_name(target, env)
        if target_name not in self.services:
            raise SimulationError(f"chain names unknown service {target_name}")
        callee = self.workloads.get(target_name)
        caller_workload.identity.allow(target_name, scope)
        method = operation.split(" ", 1)[0]
        status = {"POST": 201, "DELETE": 204}.get(method, 200)
        compiled = tuple(self._compile(child, env, active_from) for child in children)
        return Hop(
            caller_workload, target_name, callee, operation, scope, resource, size, status,
            compiled, active_from,
        )  # fmt: skip

    def _build_chains(self) -> None:
        for env in ENVIRONMENTS:
            for name, weight, office_only, hop in _CHAINS:
                root = self._compile(hop, env, self.start_ms)
                if name == "checkout" and env in ("prod", "staging"):
                    root = self._with_fraud_check(root, env)
                self.chains[env].append(ChainTemplate(name, weight, root, office_only))
            for name, envs, hop, period, hours in _ROUTINES:
                if env in envs:
                    routine = WorkerRoutine(name, self._compile(hop, env, 0), period, hours)
                    self.routines[env].append(routine)

    def _with_fraud_check(self, root: Hop, env: str) -> Hop:
        """The new-dependency change: orders-api scores every order with fraud-api from then on."""
        since = self.changes.new_dependency_ms - (0 if env == "prod" else 2 * HOUR)
        fraud = self._compile(_FRAUD_HOP, env, since)
        return Hop(
            root.caller, root.target, root.callee, root.operation, root.scope, root.resource,
            root.bytes_out, root.status, (fraud, *root.children), root.active_from,
        )  # fmt: skip

    def _build_agents(self) -> None:
        gateway = self.workload("tool-gateway")
        gateway.identity.allow("token-service", "token:exchange")
        copies = max(1, round(self.scale))
        for kind, (tool_names, people, rate, ttl_min) in _AGENTS.items():
            requesters = tuple(
                f"user:{self._rng.choice(_FIRST)}.{self._rng.choice(_LAST)}@acme.example"
                for _ in range(people)
            )
            for copy in range(copies):
                suffix = "" if copies == 1 else f"-{copy:03d}"
                identity = self._identity(
                    f"spiffe://prod/ns/agents/sa/{kind}{suffix}",
                    "agent",
                    "prod",
                    f"{kind}-agent{suffix}",
                    "acme-agent-runtime/0.9.4 (langgraph/0.2; python/3.12)",
                )
                tools = [(TOOLS[name], self.start_ms) for name in tool_names]
                if kind == NEW_AGENT_TOOL[0]:
                    tools.append((TOOLS[NEW_AGENT_TOOL[1]], self.changes.new_agent_tool_ms))
                identity.allow("tool-gateway", "tools:invoke")
                for tool, _ in tools:
                    for call in tool.calls:
                        identity.allow(tool.target, call.scope)
                agent = Agent(
                    kind, identity, self.ip(60), tools, requesters, rate, ttl_min * MINUTE
                )
                self.agents.append(agent)

    def _build_repos(self) -> None:
        repos: list[tuple[str, str | None, str | None, int]] = [
            (name, ns, deployment, self.start_ms) for name, ns, deployment in _REPOS
        ]
        repos.append((*NEW_REPO, self.changes.new_pipeline_ms))
        # Larger estates have more repositories; the extra ones build but do not deploy.
        extra = max(0, round(len(_REPOS) * (self.scale - 1)))
        repos += [(f"svc-{i:04d}", None, None, self.start_ms) for i in range(extra)]
        ua = "actions-runner/2.317.0 (linux; x64)"
        for name, namespace, deployment, since in repos:
            subject = f"repo:acme/{name}"
            main = self._identity(f"{subject}:ref:refs/heads/main", "ci", CI, "actions-runner", ua)
            pull = self._identity(f"{subject}:pull_request", "ci", CI, "actions-runner", ua)
            for identity in (main, pull):
                identity.allow("git-server", "repo:read")
                identity.allow("build-cache", "cache:read")
                identity.allow("build-cache", "cache:write")
            main.allow("ci-secrets", "ci-secrets:read")
            main.allow("artifact-registry", "registry:push")
            deployers: dict[str, Identity] = {}
            if deployment is not None:
                for env in ("staging", "prod"):
                    deployer = self._identity(
                        f"{subject}:environment:{env}", "ci", env, "actions-runner", ua
                    )
                    deployer.allow(env_name("cluster-api", env), "cluster:deploy")
                    deployer.allow(env_name("cluster-api", env), "cluster:read")
                    deployers[env] = deployer
            self.repos.append(Repo(name, namespace, deployment, since, main, pull, deployers))

    def _build_batch(self) -> None:
        for name, hour, weekdays_only, declared, steps in _BATCH:
            identity = self._identity(
                f"spiffe://prod/ns/batch/sa/{name}",
                "service",
                "prod",
                name,
                f"{name}/1.{len(name)}.0 (acme-batch; python/3.12)",
                declared=declared,
            )
            for step in steps:
                identity.allow(step.target, step.scope)
            self.batch_jobs.append(BatchJob(name, identity, hour, weekdays_only, steps))

    def _build_partners_and_operators(self) -> None:
        for p in range(max(1, round(self.scale))):
            name = f"svc-partner-sync-{p:02d}" if p else "svc-partner-sync"
            identity = self._identity(
                name, "service", "prod", "partner-sync", "PartnerSync/3.2 (Java/1.8.0_292)",
                declared=False,
            )  # fmt: skip
            calls = (
                ("orders-api", "GET /v1/orders", "checkout:read", 2 * MINUTE, 24000),
                ("inventory-api", "GET /v1/items", "catalog:read", 5 * MINUTE, 61000),
            )
            for target, _, scope, _, _ in calls:
                identity.allow(target, scope)
            key = "AKIA" + stable_hex(self.seed, "partner-key", p, chars=16).upper()
            token = Token(
                token_id=key,
                kind="api-key",
                scopes=identity.grant(),
                issued_ms=self.start_ms - 1_730 * 24 * HOUR,
                expires_ms=None,
            )
            ip = f"203.0.113.{10 + p % 240}"
            self.partners.append(Partner(identity, token, ip, calls))
        for p in range(max(2, min(len(_FIRST), round(2 * self.scale)))):
            identity = self._identity(
                f"user:{_FIRST[p]}@acme.example", "user", "prod", "kubectl",
                "kubectl/v1.30.2 (linux/amd64)", declared=False,
            )  # fmt: skip
            identity.allow("cluster-api", "cluster:read")
            self.operators.append(Operator(identity, f"10.8.0.{20 + p}"))

    # -- output --------------------------------------------------------------------------------

    def declared_identities(self) -> list[Identity]:
        return sorted((i for i in self.identities.values() if i.declared), key=lambda i: i.name)
