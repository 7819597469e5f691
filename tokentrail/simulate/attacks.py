"""The attack catalog: one class per family, each a parameterised scenario injected at a time.

An attack pushes its malicious events with its label, so their ids land in `labels.json`.
Where a story needs legitimate activity first (the build whose token later leaks, the agent
task before the prompt injection), the attack stages it with the benign building blocks and
leaves it unlabelled: it is ordinary traffic that obeys every policy.

Adding a family: subclass `Attack`, set the class attributes, implement `inject`, and list the
class in `FAMILIES`.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Final

from tokentrail.simulate.core import (
    DAY,
    HOUR,
    MINUTE,
    SECOND,
    Lane,
    SimEvent,
    Token,
    hex_id,
    stable_hex,
)
from tokentrail.simulate.estate import (
    ROTATE_MS,
    TOOLS,
    Estate,
    Identity,
    Instance,
    ToolCall,
    Workload,
    env_name,
)
from tokentrail.simulate.traffic import BuildJob, TaskRun

# Documentation address blocks (RFC 5737): clearly outside the estate's private ranges.
_ATTACKER_IPS: Final = ("198.51.100.23", "198.51.100.77", "192.0.2.146", "203.0.113.201")


@dataclass
class Context:
    """What an attack may use: the estate, its own lane and random stream, and its label."""

    estate: Estate
    lane: Lane
    rng: random.Random
    label: int


class Attack(ABC):
    """A scenario: class attributes say what it is, `inject` pushes its events."""

    family: ClassVar[str]
    mitre: ClassVar[tuple[str, ...]]
    owasp_nhi: ClassVar[tuple[str, ...]]
    summary: ClassVar[str]
    # Where a default schedule puts it, in hours into a 48-hour post-warm-up span.
    default_hour: ClassVar[float]

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms
        self.title = self.summary

    @abstractmethod
    def inject(self, ctx: Context) -> None:
        """Push this attack's events (malicious ones with `ctx.label`) into `ctx.lane`."""


@dataclass
class Caller:
    """Who makes an attack's calls: the credential, the identity it claims, and from where."""

    ctx: Context
    token: Token
    identity: Identity
    source: str
    ip: str
    environment: str
    user_agent: str | None = None
    traced: bool = True
    task_id: str | None = None
    actor: str | None = None

    def call(
        self,
        ts: int,
        target: str,
        operation: str,
        scope: str,
        *,
        resource: str | None = None,
        size: int = 2000,
        denied: bool = False,
        status: int | None = None,
        meta: bool = False,
        token: Token | None = None,
        environment: str | None = None,
        attributes: dict[str, str] | None = None,
    ) -> None:
        """Push one malicious call (with another `token` or `environment` if given)."""
        rng = self.ctx.rng
        token = token or self.token
        if status is None:
            status = 403 if denied else (201 if operation.startswith("POST ") else 200)
        self.ctx.lane.push(
            ts,
            SimEvent(
                token_id=token.token_id,
                identity=self.identity.name,
                source=self.source,
                target=target,
                operation=operation,
                scope=scope,
                outcome="denied" if denied else "success",
                status=status,
                trace_id=hex_id(rng, 128) if self.traced else None,
                span_id=hex_id(rng, 64) if self.traced else None,
                environment=environment or self.environment,
                identity_kind=self.identity.kind,
                resource=resource,
                source_ip=self.ip,
                user_agent=self.user_agent or self.identity.user_agent,
                bytes_out=120 if denied else int(size * (0.6 + 0.8 * rng.random())),
                task_id=self.task_id,
                actor=self.actor,
                token=token.meta() if meta else None,
                attributes=attributes,
            ),
            self.ctx.label,
        )


def _insider(ctx: Context, instance: Instance, workload: Workload, ts: int) -> Caller:
    """Calls made from inside a compromised workload: its address, identity and token."""
    identity = workload.identity
    env = identity.environment
    return Caller(ctx, instance.token_at(ts), identity, workload.service.name, instance.ip, env)


def _settled(instance: Instance, at: int, rng: random.Random) -> int:
    """A time a few seconds after `at`, outside the first two minutes of a token's life (when
    the instance's own rotation event is the token's first, announcing use)."""
    at += rng.randrange(SECOND, 20 * SECOND)
    since_switch = (at - instance.phase_ms) % ROTATE_MS
    return at if since_switch >= 2 * MINUTE else at + 2 * MINUTE


class TokenReplay(Attack):
    family = "token_replay"
    mitre = ("T1550.001", "T1078.004")
    owasp_nhi = ("NHI2",)
    summary = "A leaked workload token is replayed from a new address minutes after issue"
    default_hour = 10.3

    def __init__(self, at_ms: int, *, victim: str = "customers-api") -> None:
        super().__init__(at_ms)
        self.victim = victim

    def inject(self, ctx: Context) -> None:
        workload = ctx.estate.workload(self.victim)
        instance = workload.instances[0]
        # The next token this instance gets: its legitimate first use is the rotation read.
        n = -(-(self.at_ms - instance.phase_ms) // ROTATE_MS)
        token = instance.token(n)
        ip, rng = _ATTACKER_IPS[0], ctx.rng
        ts = token.issued_ms + rng.randrange(2 * MINUTE, 5 * MINUTE)
        self.title = f"Token of {self.victim} replayed from {ip} minutes after it was issued"
        attacker = Caller(
            ctx,
            token,
            workload.identity,
            workload.service.name,
            ip,
            "prod",
            user_agent="python-requests/2.31.0",
            traced=False,
        )
        for page in range(rng.randint(10, 16)):
            resource = f"customers/offset={page * 500}"
            attacker.call(
                ts, "customers-db", "GET /customers", "customers:read",
                resource=resource, size=650_000,
            )  # fmt: skip
            ts += rng.randrange(2 * SECOND, 6 * SECOND)
        attacker.call(ts, "payments-db", "GET /charges", "payments:read", denied=True)
        ts += rng.randrange(SECOND, 4 * SECOND)
        attacker.call(
            ts, "secrets-vault", "secretsmanager:ListSecrets", "secrets:read", denied=True
        )


class ScopeDrift(Attack):
    family = "scope_drift"
    mitre = ("T1078.004", "T1548.005", "AML.T0051")
    owasp_nhi = ("NHI5",)
    summary = "An agent follows injected instructions and exercises scopes beyond its task"
    default_hour = 12.6

    def __init__(self, at_ms: int, *, agent: str = "support-triage") -> None:
        super().__init__(at_ms)
        self.agent = agent

    def inject(self, ctx: Context) -> None:
        rng, estate = ctx.rng, ctx.estate
        agent = estate.agent(self.agent)
        tickets = TOOLS["tickets"]
        task = TaskRun(ctx.lane, rng, estate, agent, self.at_ms, [tickets, TOOLS["kb"]])
        # The legitimate start: the agent reads the ticket that carries the injection.
        ts = task.use(self.at_ms + rng.randrange(300, 1500), tickets, tickets.calls[0])
        self.title = f"{self.agent} agent drifts to crm export, write and admin scopes after a"
        self.title += " prompt injection in a ticket"
        label = ctx.label
        drift = (
            ("crm", "crm-api", ToolCall("POST /v1/exports/accounts", "crm:export", "export",
                                        2_400_000)),
            ("crm", "crm-api", ToolCall("PATCH /v1/accounts/{id}", "crm:write", "account", 400)),
        )  # fmt: skip
        for tool, target, call in drift:
            ts += rng.randrange(8 * SECOND, 25 * SECOND)
            span = task.invoke(ts, tool, label=label)
            # The exchange policy is too lax: it grants what the task token never had.
            token = task.exchange(ts + 12, span, target, (call.scope,), label=label)
            assert token is not None
            task.forward(ts + 40, span, token, target, call, label=label)
        for tool, target, scope in (("iam", "iam", "iam:read"),
                                    ("vault", "secrets-vault", "secrets:read")):  # fmt: skip
            ts += rng.randrange(4 * SECOND, 12 * SECOND)
            span = task.invoke(ts, tool, label=label)
            task.exchange(ts + 12, span, target, (scope,), granted=False, label=label)
        # Then it goes around the gateway with the task token itself, far outside its grant.
        ts += rng.randrange(4 * SECOND, 12 * SECOND)
        identity = agent.identity
        direct = Caller(
            ctx,
            task.token,
            identity,
            identity.workload,
            agent.ip,
            "prod",
            task_id=task.task_id,
            actor=task.actor,
        )
        direct.call(
            ts, "crm-api", "POST /admin/users/{id}/roles", "crm:admin",
            resource="user/admin-1", denied=True, status=401,
        )  # fmt: skip


class CredentialPivot(Attack):
    family = "credential_pivot"
    mitre = ("TA0008", "T1552.005", "T1528", "T1550.001", "T1098.001")
    owasp_nhi = ("NHI5", "NHI7")
    summary = "Secret read and role assumption, then derived credentials reach new systems"
    default_hour = 23.2

    def __init__(self, at_ms: int, *, victim: str = "newsletter") -> None:
        super().__init__(at_ms)
        self.victim = victim

    def inject(self, ctx: Context) -> None:
        rng, estate = ctx.rng, ctx.estate
        workload = estate.workload(self.victim)
        instance = workload.instances[0]
        ts = _settled(instance, self.at_ms, rng)
        self.title = f"{self.victim} reads another service's secret, assumes payments-operator"
        self.title += " and reaches payments-db, iam and hr-db"
        inside = _insider(ctx, instance, workload, ts)
        inside.call(
            ts, "secrets-vault", "secretsmanager:ListSecrets", "secrets:read",
            resource="prod/*", size=9000,
        )  # fmt: skip
        ts += rng.randrange(10 * SECOND, 40 * SECOND)
        inside.call(
            ts, "secrets-vault", "secretsmanager:GetSecretValue", "secrets:read",
            resource="prod/payments-api/aws-role-credentials", size=700,
        )  # fmt: skip
        ts += rng.randrange(20 * SECOND, 60 * SECOND)
        own = instance.token_at(ts)
        role = Token(
            token_id="ASIA" + stable_hex(estate.seed, "pivot-role", self.at_ms, chars=16).upper(),
            kind="sts-session",
            scopes=("payments:admin", "payments:read", "iam:admin"),
            issued_ms=ts,
            expires_ms=ts + HOUR,
            parent_token_id=own.token_id,
            audience="sts.amazonaws.com",
        )
        inside.call(
            ts, "sts", "sts:AssumeRole", "sts:assume-role",
            resource="arn:aws:iam::210987654321:role/payments-operator", size=1400, token=own,
            attributes={"issued_token_id": role.token_id},
        )  # fmt: skip
        ts += rng.randrange(20 * SECOND, 60 * SECOND)
        for page in range(rng.randint(4, 7)):
            inside.call(
                ts, "payments-db", "GET /charges", "payments:read", token=role, meta=page == 0,
                resource=f"charges/offset={page * 1000}", size=900_000,
            )  # fmt: skip
            ts += rng.randrange(3 * SECOND, 9 * SECOND)
        inside.call(
            ts, "payments-db", "POST /admin/exports", "payments:admin", token=role,
            resource="export/charges-full", size=600,
        )  # fmt: skip
        ts += rng.randrange(MINUTE, 3 * MINUTE)
        key = Token(
            token_id="AKIA" + stable_hex(estate.seed, "pivot-key", self.at_ms, chars=16).upper(),
            kind="access-key",
            scopes=("hr:read", "reports:read"),
            issued_ms=ts,
            expires_ms=None,
            parent_token_id=role.token_id,
        )
        inside.call(
            ts, "iam", "iam:CreateAccessKey", "iam:admin", token=role,
            resource="user/svc-payments-ops", size=500,
            attributes={"issued_token_id": key.token_id},
        )  # fmt: skip
        ts += rng.randrange(20 * MINUTE, 40 * MINUTE)
        for page in range(3):
            inside.call(
                ts, "hr-db", "GET /employees", "hr:read", token=key, meta=page == 0,
                resource=f"employees/offset={page * 500}", size=700_000,
            )  # fmt: skip
            ts += rng.randrange(5 * SECOND, 20 * SECOND)
        inside.call(
            ts, "reports-bucket", "s3:GetObject", "reports:read", token=key,
            resource="reports/payroll-export/latest.parquet", size=4_000_000,
        )  # fmt: skip


class SharedToken(Attack):
    family = "shared_token"
    mitre = ("T1078.004", "T1552.001")
    owasp_nhi = ("NHI9", "NHI8")
    summary = "One broad personal access token is used by several identities across environments"
    default_hour = 30.0

    # (workload, environment) of each identity that has the token pasted into its config.
    holders: ClassVar = (("reports-worker", "prod"), ("notifications", "staging"),
                         ("inventory-api", "dev"))  # fmt: skip

    def __init__(self, at_ms: int, *, duration_ms: int = 8 * HOUR) -> None:
        super().__init__(at_ms)
        self.duration_ms = duration_ms

    def inject(self, ctx: Context) -> None:
        rng, estate = ctx.rng, ctx.estate
        token = Token(
            token_id=f"pat-{stable_hex(estate.seed, 'super-token', self.at_ms)}",
            kind="personal-access-token",
            scopes=("cluster:deploy", "cluster:read", "registry:pull", "secrets:read"),
            issued_ms=self.at_ms - 120 * DAY,
            expires_ms=self.at_ms + 245 * DAY,
        )
        envs = ", ".join(env for _, env in self.holders)
        self.title = f"One personal access token used by {len(self.holders)} identities in {envs}"
        for base, env in self.holders:
            # Each holder's first call carries the claims, so whichever comes first announces.
            first = True
            workload = estate.workload(base, env)
            holder = _insider(ctx, workload.instances[0], workload, self.at_ms)
            ts = self.at_ms + rng.randrange(20 * MINUTE)
            while ts < self.at_ms + self.duration_ms:
                if rng.random() < 0.3:
                    holder.call(
                        ts, env_name("secrets-vault", env), "secretsmanager:GetSecretValue",
                        "secrets:read", resource=f"{env}/shared/deploy-key", size=600,
                        token=token, meta=first,
                    )  # fmt: skip
                else:
                    holder.call(
                        ts, env_name("cluster-api", env),
                        "GET /api/v1/namespaces/{namespace}/configmaps", "cluster:read",
                        resource=f"{workload.namespace}/configmaps", size=4000,
                        token=token, meta=first,
                    )  # fmt: skip
                first = False
                ts += rng.randrange(25 * MINUTE, 45 * MINUTE)


class ExpiredToken(Attack):
    family = "expired_token"
    mitre = ("T1550.001", "T1195.002")
    owasp_nhi = ("NHI7", "NHI2")
    summary = "A CI job token leaked in build logs is used hours after it expired"
    default_hour = 19.5

    def __init__(self, at_ms: int, *, repo: str = "web") -> None:
        super().__init__(at_ms)
        self.repo = repo

    def inject(self, ctx: Context) -> None:
        rng = ctx.rng
        repo = ctx.estate.repo(self.repo)
        job_at = self.at_ms - 3 * HOUR - rng.randrange(HOUR)
        job = BuildJob(rng, repo, job_at, main=True)
        job.run(ctx.lane, job_at)
        expires = job.token.expires_ms
        assert expires is not None
        ts = max(self.at_ms, expires + HOUR) + rng.randrange(SECOND, 20 * SECOND)
        self.title = f"Expired CI token of acme/{self.repo} used to push an image from outside"
        name = f"acme/{self.repo}"
        steps = (
            ("artifact-registry", "PUT /v2/{name}/blobs/uploads/{uuid}", "registry:push", False),
            ("artifact-registry", "PUT /v2/{name}/blobs/uploads/{uuid}", "registry:push", False),
            ("artifact-registry", "PUT /v2/{name}/manifests/{reference}", "registry:push", False),
            ("git-server", "POST /{repo}.git/git-receive-pack", "repo:write", True),
            ("ci-secrets", "secretsmanager:GetSecretValue", "ci-secrets:read", True),
        )
        outsider = Caller(
            ctx,
            job.token,
            job.identity,
            "actions-runner",
            _ATTACKER_IPS[2],
            "ci",
            user_agent="curl/8.5.0",
            traced=False,
        )
        for target, operation, scope, denied in steps:
            # The registry never checks `exp` (the bug); git and secrets do, and answer 401.
            outsider.call(
                ts, target, operation, scope, resource=f"{name}:latest", denied=denied,
                status=401 if denied else None, meta=True,
            )  # fmt: skip
            ts += rng.randrange(2 * SECOND, 30 * SECOND)


class ConfusedDeputy(Attack):
    family = "confused_deputy"
    mitre = ("T1078.004", "T1550.001")
    owasp_nhi = ("NHI5",)
    summary = "The tool gateway serves a narrow task with its own broad credential"
    default_hour = 35.25

    def __init__(self, at_ms: int, *, agent: str = "sales-assistant") -> None:
        super().__init__(at_ms)
        self.agent = agent

    def inject(self, ctx: Context) -> None:
        rng, estate, label = ctx.rng, ctx.estate, ctx.label
        agent = estate.agent(self.agent)
        crm = TOOLS["crm"]
        task = TaskRun(ctx.lane, rng, estate, agent, self.at_ms, [crm])
        ts = task.use(self.at_ms + rng.randrange(300, 1500), crm, crm.calls[0])
        self.title = f"tool-gateway uses its static broad key for a {self.agent} task"
        self.title += " and reaches hr-api and customers-api"
        broad = Token(
            token_id=f"gwk-{stable_hex(estate.seed, 'gateway-key', self.at_ms)}",
            kind="static-service-key",
            scopes=("charges:read", "crm:read", "crm:write", "people:read", "profiles:read"),
            issued_ms=self.at_ms - 200 * DAY,
            expires_ms=None,
        )
        ts += rng.randrange(10 * SECOND, 30 * SECOND)
        span = task.invoke(ts, "hr-directory", label=label)
        # The exchange is refused, and the gateway falls back to the key it should not hold.
        task.exchange(ts + 12, span, "hr-api", ("people:read",), granted=False, label=label)
        for i in range(rng.randint(3, 5)):
            call = ToolCall("GET /v1/employees/{id}/compensation", "people:read", "employee",
                            3200)  # fmt: skip
            task.forward(ts + 40 + i * 900, span, broad, "hr-api", call, label=label,
                         as_gateway=True)  # fmt: skip
        ts += rng.randrange(20 * SECOND, 60 * SECOND)
        span = task.invoke(ts, "customer-lookup", label=label)
        for i in range(2):
            call = ToolCall("GET /v1/customers/{id}", "profiles:read", "customer", 2200)
            task.forward(ts + 30 + i * 700, span, broad, "customers-api", call, label=label,
                         as_gateway=True)  # fmt: skip


class LowAndSlow(Attack):
    family = "low_and_slow"
    mitre = ("TA0008", "T1021.007", "T1526", "T1087.004")
    owasp_nhi = ("NHI5",)
    summary = "A compromised worker reaches one new system every hour or two"
    default_hour = 16.0

    # New systems in the order they are touched: (target, operation, scope, denied).
    steps: ClassVar = (
        ("customers-db", "GET /customers", "customers:read", False),
        ("ledger-db", "GET /entries", "books:read", False),
        ("hr-api", "GET /v1/employees", "people:read", False),
        ("iam", "iam:ListRoles", "iam:read", False),
        ("cluster-api", "GET /api/v1/namespaces/{namespace}/secrets", "cluster:admin", True),
        ("payments-db", "GET /charges", "payments:read", False),
        ("hr-db", "GET /employees", "hr:read", False),
    )

    def __init__(
        self,
        at_ms: int,
        *,
        victim: str = "reports-worker",
        spacing_min: tuple[int, int] = (60, 120),
    ) -> None:
        super().__init__(at_ms)
        self.victim = victim
        self.spacing_min = spacing_min

    def inject(self, ctx: Context) -> None:
        rng = ctx.rng
        workload = ctx.estate.workload(self.victim)
        instance = workload.instances[0]
        self.title = f"{self.victim} reaches {len(self.steps)} new systems, one every 1-2 hours"
        ts = self.at_ms
        inside = _insider(ctx, instance, workload, ts)
        for target, operation, scope, denied in self.steps:
            ts = _settled(instance, ts, rng)
            for _ in range(rng.randint(1, 3)):
                inside.call(
                    ts, target, operation, scope, token=instance.token_at(ts), denied=denied,
                    resource=f"{target}/limit=50", size=30_000,
                )  # fmt: skip
                ts += rng.randrange(2 * SECOND, 20 * SECOND)
            low, high = self.spacing_min
            ts += rng.randrange(low * MINUTE, high * MINUTE)


class BuildTokenOnRuntime(Attack):
    family = "build_token_on_runtime"
    mitre = ("T1195.002", "T1078.004", "T1552.001")
    owasp_nhi = ("NHI8", "NHI3")
    summary = "A malicious build dependency uses the job token on runtime and agent paths"
    default_hour = 39.7

    def __init__(self, at_ms: int, *, repo: str = "search") -> None:
        super().__init__(at_ms)
        self.repo = repo

    def inject(self, ctx: Context) -> None:
        rng = ctx.rng
        repo = ctx.estate.repo(self.repo)
        job = BuildJob(rng, repo, self.at_ms, main=True)
        job.run(ctx.lane, self.at_ms)
        self.title = f"Build token of acme/{self.repo} calls prod services and the tool gateway"
        # A postinstall script runs after the cache restore, well inside the job's token life.
        ts = self.at_ms + rng.randrange(40 * SECOND, 90 * SECOND)
        steps = (
            ("customers-api", "GET /v1/customers", "profiles:read", "customers/limit=200", False),
            ("tool-gateway", "POST /v1/tools/{tool}/invoke", "tools:invoke", "tool/crm", False),
            ("payments-api", "GET /v1/charges", "charges:read", "charges/limit=200", True),
            ("cluster-api", "GET /api/v1/namespaces/{namespace}/secrets", "cluster:admin",
             "payments/secrets", True),
        )  # fmt: skip
        for target, operation, scope, resource, denied in steps:
            job.call(ctx.lane, ts, target, operation, scope, resource, 60_000,
                     environment="prod", outcome="denied" if denied else "success",
                     label=ctx.label)  # fmt: skip
            ts += rng.randrange(2 * SECOND, 8 * SECOND)


class CrossEnvironment(Attack):
    family = "cross_environment"
    mitre = ("T1021.007", "T1078.004")
    owasp_nhi = ("NHI8",)
    summary = "A staging workload's token reaches production data stores"
    default_hour = 44.5

    def __init__(self, at_ms: int, *, victim: str = "orders-api", environment: str = "staging"):
        super().__init__(at_ms)
        self.victim = victim
        self.environment = environment

    def inject(self, ctx: Context) -> None:
        rng = ctx.rng
        workload = ctx.estate.workload(self.victim, self.environment)
        instance = workload.instances[0]
        self.title = f"{workload.service.name} ({self.environment}) reaches prod customers-db,"
        self.title += " payments-api and orders-db"
        targets = (
            ("customers-db", "GET /customers/{id}", "customers:read", "customer"),
            ("payments-api", "GET /v1/charges/{id}", "charges:read", "charge"),
            ("orders-db", "GET /orders/{id}", "orders:read", "order"),
        )
        ts = _settled(instance, self.at_ms, rng)
        inside = _insider(ctx, instance, workload, ts)
        for _ in range(rng.randint(15, 25)):
            target, operation, scope, kind = rng.choice(targets)
            inside.call(
                ts, target, operation, scope, token=instance.token_at(ts), environment="prod",
                resource=f"{kind}/{rng.randrange(10_000, 1_000_000)}", size=2500,
            )  # fmt: skip
            ts += rng.randrange(20 * SECOND, 120 * SECOND)


FAMILIES: Final[dict[str, type[Attack]]] = {
    cls.family: cls
    for cls in (
        TokenReplay,
        ScopeDrift,
        CredentialPivot,
        SharedToken,
        ExpiredToken,
        ConfusedDeputy,
        LowAndSlow,
        BuildTokenOnRuntime,
        CrossEnvironment,
    )
}
"""Every attack family by name, in catalog order; each class builds with defaults from a time."""
