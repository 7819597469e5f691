"""Benign change: the legitimate novelty a detector must not page anyone for.

The estate applies the plan (a new pipeline and service, a new dependency of every orders-api
instance, a new agent tool, an autoscaling surge); this module decides when, and describes each
change for `labels.json` so false positives can be attributed to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokentrail.simulate.core import HOUR, MINUTE
from tokentrail.simulate.estate import NEW_AGENT_TOOL, NEW_REPO, ChangePlan, Estate, env_name


@dataclass(frozen=True)
class BenignChange:
    """One labelled window of legitimate change."""

    id: str
    kind: str
    title: str
    start_ms: int
    end_ms: int
    identities: tuple[str, ...]
    targets: tuple[str, ...]


def plan_changes(warm_end_ms: int, span_ms: int) -> ChangePlan:
    """Times of the changes, spread over the post-warm-up span like a 48-hour default week."""

    def at(hour: float) -> int:
        return warm_end_ms + int(span_ms * hour / 48)

    new_pipeline = at(10.0)
    fraud_live = new_pipeline + 3 * HOUR + 20 * MINUTE
    return ChangePlan(
        new_pipeline_ms=new_pipeline,
        fraud_live_ms=fraud_live,
        new_dependency_ms=fraud_live + 40 * MINUTE,
        new_agent_tool_ms=at(33.5),
        scale_out_ms=at(41.0),
        scale_out_until_ms=at(41.0) + 2 * HOUR,
    )


def describe_changes(estate: Estate) -> list[BenignChange]:
    """The labelled windows of the planned changes that start inside the world."""
    plan = estate.changes
    repo = estate.repo(NEW_REPO[0])
    fraud = [estate.workload("fraud-api", env) for env in ("staging", "prod")]
    orders = [estate.workload("orders-api", env) for env in ("staging", "prod")]
    ci_identities = [repo.main, repo.pull_request, *repo.deployers.values()]
    changes = [
        BenignChange(
            "change-1",
            "new_pipeline",
            "New repository acme/fraud gets a pipeline and deploys fraud-api to staging and prod",
            plan.new_pipeline_ms,
            plan.fraud_live_ms + HOUR,
            tuple(sorted({i.name for i in ci_identities} | {w.identity.name for w in fraud})),
            tuple(sorted({*(t for i in ci_identities for t in i.targets)})),
        ),
        BenignChange(
            "change-2",
            "new_dependency",
            "A deploy of orders-api makes every instance call fraud-api on checkout",
            plan.new_dependency_ms - 2 * HOUR - 6 * MINUTE,
            plan.new_dependency_ms + HOUR,
            tuple(sorted(w.identity.name for w in orders)),
            tuple(sorted(env_name("fraud-api", env) for env in ("staging", "prod"))),
        ),
        BenignChange(
            "change-3",
            "new_agent_tool",
            f"The {NEW_AGENT_TOOL[0]} agents are given the {NEW_AGENT_TOOL[1]} tool",
            plan.new_agent_tool_ms,
            plan.new_agent_tool_ms + 4 * HOUR,
            tuple(sorted(a.identity.name for a in estate.agents if a.kind == NEW_AGENT_TOOL[0])),
            ("status-page",),
        ),
        BenignChange(
            "change-4",
            "scale_out",
            "A traffic surge makes the autoscaler double search-api: new pods, addresses, tokens",
            plan.scale_out_ms,
            plan.scale_out_until_ms,
            (estate.workload("search-api").identity.name,),
            (),
        ),
    ]
    return [c for c in changes if c.start_ms < estate.end_ms]
