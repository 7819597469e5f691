"""Benign traffic: one generator per rhythm of the estate, each writing into its own lane.

Every generator only performs calls the estate declared, with the token its workload holds at
that moment, from that workload's own address. Hence the invariants the tests check: a benign
token is used by one identity, from one address, in one environment, before it expires, and
within its grant and its identity's declared policy.

The building blocks (`ChainRun`, `TaskRun`, `BuildJob`) are shared with the attacks, which
use them to stage the legitimate activity a scenario starts from.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from heapq import heapify, heappop, heappush

from tokentrail.simulate.core import (
    BENIGN,
    DAY,
    HOUR,
    MINUTE,
    SECOND,
    Chunk,
    Lane,
    SimEvent,
    Token,
    day_hour,
    hex_id,
    office_hours,
    poisson,
)
from tokentrail.simulate.estate import (
    CI,
    ROTATE_MS,
    Agent,
    BatchJob,
    ChainTemplate,
    Estate,
    Hop,
    Instance,
    Repo,
    Tool,
    ToolCall,
    Workload,
    env_name,
)

# Relative request volume per UTC hour (customers in Europe and the Americas).
_DIURNAL = (
    0.22, 0.16, 0.12, 0.10, 0.10, 0.14, 0.25, 0.42, 0.62, 0.78, 0.86, 0.92,
    0.95, 0.97, 1.00, 1.00, 0.98, 0.95, 0.92, 0.90, 0.84, 0.70, 0.50, 0.32,
)  # fmt: skip
# Request chains per minute at the daily peak, at scale 1.
_CHAINS_PER_MINUTE = {"prod": 8.0, "staging": 0.6, "dev": 0.3}
_WEEKEND = 0.7
_DENY_RATE = 0.003
_ERROR_RATE = 0.005
_POLL_MS = 15 * MINUTE


def _resource(kind: str | None, rid: int) -> str | None:
    return None if kind is None else f"{kind}/{rid}"


def _size(rng: random.Random, size: int) -> int:
    return int(size * (0.4 + 1.2 * rng.random()))


class Pools:
    """Live instances per workload over one window (a minute of the mesh), computed lazily."""

    __slots__ = ("_pools", "begin", "end")

    def __init__(self, begin: int, end: int) -> None:
        self.begin = begin
        self.end = end
        self._pools: dict[Workload, list[Instance]] = {}

    def get(self, workload: Workload) -> list[Instance]:
        pool = self._pools.get(workload)
        if pool is None:
            pool = self._pools[workload] = workload.live(self.begin, self.end)
        return pool


class ChainRun:
    """One request chain: a trace, on behalf of one actor, through `Hop`s of the mesh.

    The hot path of the simulator (most events are hops), hence the plain draws from
    `random()` and the context kept on the object rather than passed as arguments."""

    __slots__ = ("actor", "label", "lane", "pools", "rid", "rng", "trace_id")

    def __init__(
        self,
        lane: Lane,
        rng: random.Random,
        pools: Pools,
        *,
        actor: str | None,
        rid: int,
        label: int = BENIGN,
    ) -> None:
        self.lane = lane
        self.rng = rng
        self.pools = pools
        self.actor = actor
        self.rid = rid
        self.label = label
        self.trace_id = f"{rng.getrandbits(128):032x}"

    def hop(self, hop: Hop, instance: Instance, ts: int, parent_span: str | None) -> int:
        """Push one hop and, recursively, the calls it makes; return when it ended."""
        rng = self.rng
        draw = rng.random()
        identity = hop.caller.identity
        span = f"{rng.getrandbits(64):016x}"
        outcome = "success"
        status = hop.status
        size = int(hop.bytes_out * (0.4 + 1.2 * rng.random()))
        if draw < _DENY_RATE:
            # Denied on the object, not the scope: ownership checks fail now and then.
            outcome, status, size = "denied", 403, 120
        elif draw < _DENY_RATE + _ERROR_RATE:
            outcome, status, size = "error", 503, 120
        kind = hop.resource
        # Positional, in contract field order: this line runs for most events of a world.
        event = SimEvent(
            "", "", instance.token_at(ts).token_id, identity.name, hop.caller.service.name,
            hop.target, hop.operation, hop.scope, outcome, status, self.trace_id, span,
            parent_span, identity.environment, "service",
            None if kind is None else f"{kind}/{self.rid}", instance.ip, identity.user_agent,
            size, None, self.actor,
        )  # fmt: skip
        self.lane.push(ts, event, self.label)
        if outcome == "denied":
            return ts + 3
        if outcome == "error":
            # The client retries once after a short backoff, in the same trace, as a new span.
            return self.hop(hop, instance, ts + 80 + int(rng.random() * 300), parent_span)
        end = ts + 2 + int(rng.random() * 6)
        if hop.children:
            assert hop.callee is not None
            pool = self.pools.get(hop.callee)
            if not pool:
                return end
            callee = pool[int(rng.random() * len(pool))]
            for child in hop.children:
                if child.active_from <= ts:
                    end = self.hop(child, callee, end + 1, span)
        return end + 1 + int(rng.random() * 20)


def _cumulative(templates: list[ChainTemplate], office: bool) -> list[float]:
    weights = [t.weight if office or not t.office_only else 0.0 for t in templates]
    return list(itertools.accumulate(weights))


def mesh(lane: Lane, estate: Estate, env: str, rng: random.Random) -> Iterator[Chunk]:
    """User-driven request chains through the service mesh of one environment, plus the
    background routines of its workers; volume follows the day, the week and bursts."""
    templates = estate.chains[env]
    by_name = {t.name: i for i, t in enumerate(templates)}
    office_cum = _cumulative(templates, True)
    other_cum = _cumulative(templates, False)
    edge = estate.workload("edge-gateway", env)
    base_rate = _CHAINS_PER_MINUTE[env] * estate.scale
    bursts = _bursts(estate, env, rng, by_name)
    routines = [
        (r, estate.start_ms + MINUTE + rng.randrange(r.period_ms)) for r in estate.routines[env]
    ]
    t = estate.start_ms + MINUTE
    while t < estate.end_ms:
        bucket_end = t + MINUTE
        # Chains started in this minute may run a little past it.
        pools = Pools(t, bucket_end + 10 * SECOND)
        edges = pools.get(edge)
        weekday, hour = day_hour(t)
        rate = base_rate * _DIURNAL[int(hour)] * (_WEEKEND if weekday >= 5 else 1.0)
        office = weekday < 5 and 8 <= hour < 18
        cum = office_cum if office else other_cum
        picks: list[int] = []
        for _ in range(poisson(rng, rate)):
            picks.append(bisect.bisect_right(cum, rng.random() * cum[-1]))
        for begin, end, factor, surging in bursts:
            if begin <= t < end:
                picks += [surging] * poisson(rng, rate * (factor - 1))
        if edges:
            for pick in picks:
                ts = t + int(rng.random() * MINUTE)
                rid = 10_000 + int(rng.random() * 990_000)
                template = templates[pick]
                actor = f"employee:{rid}" if template.office_only else f"customer:{rid}"
                chain = ChainRun(lane, rng, pools, actor=actor, rid=rid)
                chain.hop(template.root, edges[int(rng.random() * len(edges))], ts, None)
        for i, (routine, due) in enumerate(routines):
            while due < bucket_end:
                lo, hi = routine.hours
                pool = pools.get(routine.root.caller)
                if lo <= day_hour(due)[1] < hi and pool:
                    chain = ChainRun(lane, rng, pools, actor=None, rid=rng.randrange(1000, 99_999))
                    chain.hop(routine.root, pool[rng.randrange(len(pool))], due, None)
                due += routine.period_ms + rng.randrange(-20 * SECOND, 20 * SECOND)
            routines[i] = (routine, due)
        yield lane.release(bucket_end)
        t = bucket_end
    yield lane.release()


def _bursts(
    estate: Estate, env: str, rng: random.Random, by_name: dict[str, int]
) -> list[tuple[int, int, float, int]]:
    """Flash sales and crawlers: two short bursts a day, plus the scale-out window's surge."""
    bursts = []
    days = (estate.end_ms - estate.start_ms + DAY - 1) // DAY
    for day in range(days):
        for _ in range(2):
            begin = estate.start_ms + day * DAY + rng.randrange(7 * HOUR, 22 * HOUR)
            length = rng.randrange(10 * MINUTE, 25 * MINUTE)
            template = by_name[rng.choice(("browse", "product", "checkout"))]
            bursts.append((begin, begin + length, rng.uniform(2.5, 4.5), template))
    if env == "prod":
        plan = estate.changes
        bursts.append((plan.scale_out_ms, plan.scale_out_until_ms, 4.0, by_name["browse"]))
    return bursts


def housekeeping(lane: Lane, estate: Estate, rng: random.Random) -> Iterator[Chunk]:
    """What every instance does on its own: read its secret with each new token (rotation)
    and poll its configuration. The secret read is the first use of every workload token."""
    startup, rotate, poll = 0, 1, 2
    # Per instance: the instance and the fixed parts of its two calls.
    members: list[tuple[Instance, str, str, str, str, str]] = []
    queue: list[tuple[int, int, int]] = []
    for workload in estate.workloads.values():
        env, base = workload.service.environment, workload.service.base
        for instance in workload.instances:
            i = len(members)
            members.append((
                instance, workload.service.name, env_name("secrets-vault", env),
                f"{env}/{base}/credentials", env_name("config-service", env), f"config/{base}",
            ))  # fmt: skip
            ready = instance.active_from
            if ready <= estate.start_ms:
                ready = estate.start_ms + rng.randrange(MINUTE)
            queue.append((ready, i, startup))
            n = (ready - instance.phase_ms) // ROTATE_MS
            queue.append((instance.switch_ms(n + 1), i, rotate))
            queue.append((ready + rng.randrange(_POLL_MS), i, poll))
    heapify(queue)
    random_ = rng.random
    getrandbits = rng.getrandbits
    released = estate.start_ms
    while queue:
        ts, i, kind = heappop(queue)
        instance, source, vault, secret, config, settings = members[i]
        if ts >= estate.end_ms or ts >= instance.active_until:
            continue
        if ts >= released + MINUTE:
            released = ts
            yield lane.release(ts)
        identity = instance.identity
        meta = None
        if kind == poll:
            token = instance.token_at(ts)
            jitter = int(random_() * 40 * SECOND) - 20 * SECOND
            heappush(queue, (ts + _POLL_MS + jitter, i, poll))
            call = (config, "GET /v1/config/{name}", "config:read", settings, 1800)
        else:
            if kind == rotate:
                n = (ts - instance.phase_ms) // ROTATE_MS
                token = instance.token(n)
                heappush(queue, (instance.switch_ms(n + 1), i, rotate))
            else:
                token = instance.token_at(ts + 1)
            meta = token.meta()
            call = (vault, "secretsmanager:GetSecretValue", "secrets:read", secret, 700)
        target, operation, scope, resource, size = call
        event = SimEvent(
            "", "", token.token_id, identity.name, source, target, operation, scope, "success",
            200, f"{getrandbits(128):032x}", f"{getrandbits(64):016x}", None,
            identity.environment, "service", resource, instance.ip, identity.user_agent,
            int(size * (0.4 + 1.2 * random_())), None, None, meta,
        )  # fmt: skip
        lane.push(ts, event)
    yield lane.release()


class TaskRun:
    """One task of an AI agent: a short-lived task token, exchanged at the tool gateway for a
    narrower token per tool (`parent_token_id` = the task token), all in one trace.

    Attacks drive the same object with their own choices (a scope the task was not granted,
    a gateway credential instead of an exchanged one)."""

    def __init__(
        self,
        lane: Lane,
        rng: random.Random,
        estate: Estate,
        agent: Agent,
        at: int,
        tools: list[Tool],
        *,
        actor: str | None = None,
    ) -> None:
        self.lane = lane
        self.rng = rng
        self.agent = agent
        self.task_id = f"task-{hex_id(rng, 64)}"
        scopes = {"tools:invoke"} | {s for tool in tools for s in tool.scopes()}
        self.token = Token(
            token_id=f"tt-{hex_id(rng, 96)}",
            kind="agent-task",
            scopes=tuple(sorted(scopes)),
            issued_ms=at,
            expires_ms=at + agent.task_ttl_ms,
            audience="tool-gateway",
        )
        gateway = estate.workload("tool-gateway")
        pool = gateway.live(at, at + agent.task_ttl_ms) or gateway.instances
        self.gateway = pool[rng.randrange(len(pool))]
        self.gateway_workload = gateway
        self.actor = actor or rng.choice(agent.requesters)
        self.trace_id = hex_id(rng, 128)
        self.downstream: dict[str, Token] = {}
        self._announced: set[str] = set()

    def _meta(self, token: Token) -> Token | None:
        if token.token_id in self._announced:
            return None
        self._announced.add(token.token_id)
        return token

    def invoke(self, ts: int, tool: str, *, label: int = BENIGN) -> str:
        """The agent asks the gateway to run `tool`, with its task token; returns the span."""
        span = hex_id(self.rng, 64)
        announce = self._meta(self.token)
        identity = self.agent.identity
        self.lane.push(
            ts,
            SimEvent(
                token_id=self.token.token_id,
                identity=identity.name,
                source=identity.workload,
                target="tool-gateway",
                operation="POST /v1/tools/{tool}/invoke",
                scope="tools:invoke",
                status=200,
                trace_id=self.trace_id,
                span_id=span,
                environment="prod",
                identity_kind="agent",
                resource=f"tool/{tool}",
                source_ip=self.agent.ip,
                user_agent=identity.user_agent,
                bytes_out=_size(self.rng, 2500),
                task_id=self.task_id,
                actor=self.actor,
                token=None if announce is None else announce.meta(),
            ),
            label,
        )
        return span

    def exchange(
        self,
        ts: int,
        parent_span: str,
        audience: str,
        scopes: tuple[str, ...],
        *,
        granted: bool = True,
        label: int = BENIGN,
    ) -> Token | None:
        """The gateway trades the task token for a narrower one (RFC 8693 token exchange)."""
        issued = None
        attributes = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_id": self.token.token_id,
            "requested_audience": audience,
            "requested_scope": " ".join(scopes),
        }
        if granted:
            expires = min(ts + 10 * MINUTE, self.token.expires_ms or ts + 10 * MINUTE)
            issued = Token(
                token_id=f"xt-{hex_id(self.rng, 96)}",
                kind="exchanged",
                scopes=scopes,
                issued_ms=ts,
                expires_ms=expires,
                parent_token_id=self.token.token_id,
                audience=audience,
            )
            attributes["issued_token_id"] = issued.token_id
        gateway = self.gateway_workload.identity
        token = self.gateway.token_at(ts)
        self.lane.push(
            ts,
            SimEvent(
                token_id=token.token_id,
                identity=gateway.name,
                source="tool-gateway",
                target="token-service",
                operation="POST /oauth2/token",
                scope="token:exchange",
                outcome="success" if granted else "denied",
                status=200 if granted else 403,
                trace_id=self.trace_id,
                span_id=hex_id(self.rng, 64),
                parent_span_id=parent_span,
                environment="prod",
                identity_kind="service",
                source_ip=self.gateway.ip,
                user_agent=gateway.user_agent,
                bytes_out=1100 if granted else 90,
                task_id=self.task_id,
                actor=self.agent.identity.name,
                attributes=attributes,
            ),
            label,
        )
        return issued

    def forward(
        self,
        ts: int,
        parent_span: str,
        token: Token,
        target: str,
        call: ToolCall,
        *,
        denied: bool = False,
        label: int = BENIGN,
        as_gateway: bool = False,
    ) -> None:
        """The gateway calls the tool's service with `token` on the task's behalf.

        With `as_gateway` the call is made under the gateway's own identity (the confused
        deputy); normally it is made with the agent's exchanged token, as the agent."""
        announce = self._meta(token)
        if as_gateway:
            identity = self.gateway_workload.identity
            kind, actor = "service", self.agent.identity.name
        else:
            identity, kind, actor = self.agent.identity, "agent", self.actor
        rid = self.rng.randrange(1000, 900_000)
        self.lane.push(
            ts,
            SimEvent(
                token_id=token.token_id,
                identity=identity.name,
                source="tool-gateway",
                target=target,
                operation=call.operation,
                scope=call.scope,
                outcome="denied" if denied else "success",
                status=403 if denied else (201 if call.operation.startswith("POST") else 200),
                trace_id=self.trace_id,
                span_id=hex_id(self.rng, 64),
                parent_span_id=parent_span,
                environment="prod",
                identity_kind=kind,
                resource=_resource(call.resource, rid),
                source_ip=self.gateway.ip,
                user_agent=self.gateway_workload.identity.user_agent,
                bytes_out=120 if denied else _size(self.rng, call.bytes_out),
                task_id=self.task_id,
                actor=actor,
                token=None if announce is None else announce.meta(),
            ),
            label,
        )

    def use(self, ts: int, tool: Tool, call: ToolCall, *, label: int = BENIGN) -> int:
        """One benign tool call: invoke, exchange (once per tool), forward. Returns its end."""
        span = self.invoke(ts, tool.name, label=label)
        ts += 4 + self.rng.randrange(15)
        token = self.downstream.get(tool.name)
        if token is None:
            token = self.exchange(ts, span, tool.target, tool.scopes(), label=label)
            assert token is not None
            self.downstream[tool.name] = token
            ts += 15 + self.rng.randrange(40)
        self.forward(ts, span, token, tool.target, call, label=label)
        return ts + 50 + self.rng.randrange(900)


def run_task(lane: Lane, rng: random.Random, estate: Estate, agent: Agent, at: int) -> int:
    """A benign task: one to three of the agent's tools, a few calls; returns when it ended."""
    available = agent.tools_at(at)
    tools = rng.sample(available, k=min(len(available), rng.choice((1, 1, 2, 2, 3))))
    task = TaskRun(lane, rng, estate, agent, at, tools)
    ts = at + rng.randrange(200, 2000)
    for _ in range(rng.randint(1, 5)):
        tool = rng.choice(tools)
        ts = task.use(ts, tool, rng.choice(tool.calls))
        ts += rng.randrange(5 * SECOND, 70 * SECOND)
    return ts


def agents(lane: Lane, estate: Estate, rng: random.Random) -> Iterator[Chunk]:
    """Agents work in office hours: tasks arrive as a Poisson stream per agent identity."""
    bucket = 10 * MINUTE
    copies: dict[str, int] = {}
    for agent in estate.agents:
        copies[agent.kind] = copies.get(agent.kind, 0) + 1
    t = estate.start_ms
    while t < estate.end_ms:
        if office_hours(t):
            lunch = 0.6 if 12 <= day_hour(t)[1] < 13 else 1.0
            for agent in estate.agents:
                rate = agent.tasks_per_hour * estate.scale / copies[agent.kind]
                for _ in range(poisson(rng, rate * lunch * bucket / HOUR)):
                    run_task(lane, rng, estate, agent, t + rng.randrange(bucket))
        t += bucket
        yield lane.release(t)
    yield lane.release()


class BuildJob:
    """A CI job with its per-job federated token, runner address and trace."""

    def __init__(
        self, rng: random.Random, repo: Repo, at: int, *, main: bool, ttl_ms: int = HOUR
    ) -> None:
        self.rng = rng
        self.repo = repo
        self.identity = repo.main if main else repo.pull_request
        self.token = Token(
            token_id=f"ci-{hex_id(rng, 96)}",
            kind="ci-job",
            scopes=self.identity.grant(),
            issued_ms=at,
            expires_ms=at + ttl_ms,
            audience="https://ci.acme.internal",
        )
        self.ip = f"10.50.{rng.randrange(16)}.{rng.randrange(2, 250)}"
        self.trace_id = hex_id(rng, 128)
        self.main = main
        self._announced = False

    def call(
        self,
        lane: Lane,
        ts: int,
        target: str,
        operation: str,
        scope: str,
        resource: str | None,
        size: int,
        *,
        environment: str = CI,
        outcome: str = "success",
        status: int | None = None,
        label: int = BENIGN,
    ) -> None:
        announce = not self._announced
        self._announced = True
        if status is None:
            status = {"success": 200, "denied": 403, "error": 500}[outcome]
        lane.push(
            ts,
            SimEvent(
                token_id=self.token.token_id,
                identity=self.identity.name,
                source="actions-runner",
                target=target,
                operation=operation,
                scope=scope,
                outcome=outcome,
                status=status,
                trace_id=self.trace_id,
                span_id=hex_id(self.rng, 64),
                environment=environment,
                identity_kind="ci",
                resource=resource,
                source_ip=self.ip,
                user_agent=self.identity.user_agent,
                bytes_out=_size(self.rng, size) if outcome == "success" else 150,
                token=self.token.meta() if announce else None,
            ),
            label,
        )

    def run(self, lane: Lane, at: int) -> int:
        """The build itself: clone, cache, (secrets), build, cache, (push). Returns its end."""
        rng, name = self.rng, f"acme/{self.repo.name}"
        self.call(lane, at, "git-server", "GET /{repo}.git/info/refs", "repo:read", name, 900)
        ts = at + rng.randrange(400, 2500)
        self.call(lane, ts, "git-server", "POST /{repo}.git/git-upload-pack", "repo:read",
                  name, 9_000_000)  # fmt: skip
        key = f"cache/{self.repo.name}/{hex_id(rng, 32)}"
        ts += rng.randrange(2 * SECOND, 6 * SECOND)
        self.call(lane, ts, "build-cache", "GET /v1/cache/{key}", "cache:read", key, 40_000_000)
        if self.main:
            ts += rng.randrange(5 * SECOND, 20 * SECOND)
            self.call(lane, ts, "ci-secrets", "secretsmanager:GetSecretValue", "ci-secrets:read",
                      f"ci/{self.repo.name}/registry-credentials", 500)  # fmt: skip
        ts += rng.randrange(2 * MINUTE, 9 * MINUTE)
        self.call(lane, ts, "build-cache", "PUT /v1/cache/{key}", "cache:write", key, 300)
        if self.main:
            digest = f"{name}@sha256:{hex_id(rng, 64)}"
            for _ in range(rng.randint(2, 4)):
                ts += rng.randrange(300, 4000)
                self.call(lane, ts, "artifact-registry", "PUT /v2/{name}/blobs/uploads/{uuid}",
                          "registry:push", digest, 200)  # fmt: skip
            ts += rng.randrange(300, 2000)
            self.call(lane, ts, "artifact-registry", "PUT /v2/{name}/manifests/{reference}",
                      "registry:push", digest, 200)  # fmt: skip
        return ts + rng.randrange(2 * SECOND, 10 * SECOND)


def deploy_job(lane: Lane, rng: random.Random, repo: Repo, env: str, at: int) -> int:
    """A deployment: patch the workload on the environment's cluster, then watch the rollout."""
    identity = repo.deployers[env]
    token = Token(
        token_id=f"ci-{hex_id(rng, 96)}",
        kind="ci-job",
        scopes=identity.grant(),
        issued_ms=at,
        expires_ms=at + 30 * MINUTE,
        audience="https://ci.acme.internal",
    )
    ip = f"10.50.{rng.randrange(16)}.{rng.randrange(2, 250)}"
    trace = hex_id(rng, 128)
    cluster = env_name("cluster-api", env)
    resource = f"{repo.namespace}/deployment/{repo.deployment}"
    route = "/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    ts = at
    steps = [("PATCH " + route, "cluster:deploy", 2600)]
    steps += [("GET " + route + "/status", "cluster:read", 1900)] * rng.randint(3, 6)
    for i, (operation, scope, size) in enumerate(steps):
        lane.push(
            ts,
            SimEvent(
                token_id=token.token_id,
                identity=identity.name,
                source="actions-runner",
                target=cluster,
                operation=operation,
                scope=scope,
                status=200,
                trace_id=trace,
                span_id=hex_id(rng, 64),
                environment=env,
                identity_kind="ci",
                resource=resource,
                source_ip=ip,
                user_agent=identity.user_agent,
                bytes_out=_size(rng, size),
                token=token.meta() if i == 0 else None,
            ),
        )
        ts += rng.randrange(8 * SECOND, 20 * SECOND)
    return ts


def ci(lane: Lane, estate: Estate, rng: random.Random) -> Iterator[Chunk]:
    """Pull-request and main builds in office hours, nightly builds, and the deployments that
    follow main builds; the planned changes bring their own deployments."""
    bucket = 10 * MINUTE
    rate = 1.2 * min(1.0, estate.scale)
    plan = estate.changes
    scheduled = sorted([
        (plan.fraud_live_ms - 2 * HOUR - 4 * MINUTE, "fraud", "staging"),
        (plan.fraud_live_ms - 4 * MINUTE, "fraud", "prod"),
        (plan.new_dependency_ms - 2 * HOUR - 6 * MINUTE, "orders", "staging"),
        (plan.new_dependency_ms - 6 * MINUTE, "orders", "prod"),
    ])  # fmt: skip
    t = estate.start_ms
    while t < estate.end_ms:
        # The nightly builds start in the bucket that begins at 02:00.
        nightly = 2.0 <= day_hour(t)[1] < 2.0 + bucket / HOUR
        for repo in estate.repos:
            if repo.active_from > t:
                continue
            starts: list[tuple[int, bool]] = []
            if nightly:
                starts.append((t + rng.randrange(bucket), True))
            if office_hours(t):
                for _ in range(poisson(rng, rate * bucket / HOUR)):
                    starts.append((t + rng.randrange(bucket), rng.random() < 0.3))
            for at, main in starts:
                if at <= repo.active_from:
                    continue
                end = BuildJob(rng, repo, at, main=main).run(lane, at)
                if not main or not repo.deployers or nightly:
                    continue
                if rng.random() < 0.6:
                    end = deploy_job(lane, rng, repo, "staging", end + rng.randrange(MINUTE))
                    later = end + rng.randrange(20 * MINUTE, 60 * MINUTE)
                    if rng.random() < 0.35 and office_hours(later):
                        deploy_job(lane, rng, repo, "prod", later)
        while scheduled and scheduled[0][0] < t + bucket:
            at, name, env = scheduled.pop(0)
            deploy_job(lane, rng, estate.repo(name), env, max(at, t))
        t += bucket
        yield lane.release(t)
    yield lane.release()


def batch(lane: Lane, estate: Estate, rng: random.Random) -> Iterator[Chunk]:
    """Nightly jobs: each run gets its own pod, token and trace, and pages through its data."""
    day = estate.start_ms - estate.start_ms % DAY
    while day < estate.end_ms:
        runs = sorted(
            (day + int(job.hour * HOUR) + rng.randrange(10 * MINUTE), i)
            for i, job in enumerate(estate.batch_jobs)
            if not (job.weekdays_only and day_hour(day)[0] >= 5)
        )
        for at, i in runs:
            yield lane.release(at)
            _batch_run(lane, rng, estate, estate.batch_jobs[i], at)
        day += DAY
    yield lane.release()


def _batch_run(lane: Lane, rng: random.Random, estate: Estate, job: BatchJob, at: int) -> None:
    identity = job.identity
    token = Token(
        token_id=f"sa-{hex_id(rng, 96)}",
        kind="k8s-service-account",
        scopes=identity.grant(),
        issued_ms=at,
        expires_ms=at + HOUR,
        audience="prod.mesh.acme.internal",
    )
    ip = f"10.21.{rng.randrange(256)}.{rng.randrange(2, 250)}"
    trace = hex_id(rng, 128)
    ts = at
    first = True
    for step in job.steps:
        pages = max(1, round(step.pages * min(estate.scale, 4.0)))
        for page in range(pages):
            resource = step.resource
            if resource == "cursor":
                resource = f"cursor/{page}"
            elif resource == "report":
                resource = f"reports/{job.name}/{ts // DAY}.parquet"
            lane.push(
                ts,
                SimEvent(
                    token_id=token.token_id,
                    identity=identity.name,
                    source=identity.workload,
                    target=step.target,
                    operation=step.operation,
                    scope=step.scope,
                    status=201 if step.operation.startswith("POST") else 200,
                    trace_id=trace,
                    span_id=hex_id(rng, 64),
                    environment="prod",
                    identity_kind="service",
                    resource=resource,
                    source_ip=ip,
                    user_agent=identity.user_agent,
                    bytes_out=_size(rng, step.bytes_out),
                    token=token.meta() if first else None,
                ),
            )
            first = False
            ts += rng.randrange(150, 400)
        ts += rng.randrange(SECOND, 10 * SECOND)


def partners(lane: Lane, estate: Estate, rng: random.Random) -> Iterator[Chunk]:
    """Legacy integrations poll around the clock with one long-lived key and no trace context."""
    queue: list[tuple[int, int, int, int]] = []
    for p, partner in enumerate(estate.partners):
        for c, call in enumerate(partner.calls):
            heappush(queue, (estate.start_ms + rng.randrange(call[3]), p, c, 0))
    announced: set[int] = set()
    released = estate.start_ms
    while queue:
        ts, p, c, _ = heappop(queue)
        if ts >= estate.end_ms:
            continue
        if ts >= released + MINUTE:
            released = ts
            yield lane.release(ts)
        partner = estate.partners[p]
        target, operation, scope, period, size = partner.calls[c]
        identity = partner.identity
        lane.push(
            ts,
            SimEvent(
                token_id=partner.token.token_id,
                identity=identity.name,
                source=identity.workload,
                target=target,
                operation=operation,
                scope=scope,
                status=200,
                environment="prod",
                identity_kind="service",
                resource=f"since/{(ts - period) // 1000}",
                source_ip=partner.ip,
                user_agent=identity.user_agent,
                bytes_out=_size(rng, size),
                token=None if p in announced else partner.token.meta(),
            ),
        )
        announced.add(p)
        heappush(queue, (ts + period + rng.randrange(-5 * SECOND, 5 * SECOND), p, c, 0))
    yield lane.release()


_KUBECTL = (
    ("GET /api/v1/namespaces/{namespace}/pods", 14000),
    ("GET /apis/apps/v1/namespaces/{namespace}/deployments", 9000),
    ("GET /api/v1/namespaces/{namespace}/events", 7000),
    ("GET /api/v1/namespaces/{namespace}/pods/{name}/log", 30000),
)


def operators(lane: Lane, estate: Estate, rng: random.Random) -> Iterator[Chunk]:
    """SREs look at the cluster with kubectl in office hours, with hourly single-sign-on tokens."""
    namespaces = sorted({w.namespace for w in estate.workloads.values()})
    day = estate.start_ms - estate.start_ms % DAY
    while day < estate.end_ms:
        if day_hour(day)[0] < 5:
            sessions = []
            for operator in estate.operators:
                for _ in range(rng.randint(1, 2)):
                    begin = day + rng.randrange(8 * HOUR, 16 * HOUR)
                    sessions.append((begin, begin + rng.randrange(20 * MINUTE, 2 * HOUR), operator))
            sessions.sort(key=lambda s: s[0])
            for begin, end, operator in sessions:
                yield lane.release(begin)
                identity = operator.identity
                ts = begin
                token: Token | None = None
                while ts < end:
                    if token is None or ts >= token.issued_ms + 55 * MINUTE:
                        token = Token(
                            token_id=f"sso-{hex_id(rng, 96)}",
                            kind="oidc-id-token",
                            scopes=("cluster:read",),
                            issued_ms=ts,
                            expires_ms=ts + HOUR,
                            audience="cluster-api",
                        )
                        announce = True
                    namespace = rng.choice(namespaces)
                    for _ in range(rng.randint(1, 5)):
                        operation, size = rng.choice(_KUBECTL)
                        lane.push(
                            ts,
                            SimEvent(
                                token_id=token.token_id,
                                identity=identity.name,
                                source=identity.workload,
                                target="cluster-api",
                                operation=operation,
                                scope="cluster:read",
                                status=200,
                                environment="prod",
                                identity_kind="user",
                                resource=f"{namespace}/pods",
                                source_ip=operator.ip,
                                user_agent=identity.user_agent,
                                bytes_out=_size(rng, size),
                                token=token.meta() if announce else None,
                            ),
                        )
                        announce = False
                        ts += rng.randrange(300, 6000)
                    ts += rng.randrange(MINUTE, 10 * MINUTE)
        day += DAY
    yield lane.release()
