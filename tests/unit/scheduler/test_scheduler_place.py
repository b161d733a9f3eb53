"""Placement: named rejections, strategies, in-flight spreading, and invariants."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from shoal.scheduler import (
    NodeView,
    NoPlacement,
    Placement,
    PlacementRequest,
    Reason,
    SchedulerConfig,
    Strategy,
    place,
)
from shoal.scheduler.filters import reject_reason

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CFG = SchedulerConfig()


def node(node_id: str = "n1", **kw: object) -> NodeView:
    base = NodeView(
        node_id=node_id,
        last_seen=NOW,
        cpu_capacity=4,
        memory_capacity_mb=4096,
        templates=frozenset({"base"}),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def req(**kw: object) -> PlacementRequest:
    return replace(PlacementRequest("base", 2, 512, NOW), **kw)  # type: ignore[arg-type]


def test_each_filter_names_its_reason() -> None:
    cases = {
        Reason.EXCLUDED: (node(), req(exclude=frozenset({"n1"}))),
        Reason.UNHEALTHY: (node(last_seen=NOW - timedelta(seconds=11)), req()),
        Reason.DRAINING: (node(draining=True), req()),
        Reason.MISSING_TEMPLATE: (node(), req(template_id="other")),
        Reason.CPU: (node(cpu_allocated=15), req()),
        Reason.MEMORY: (node(memory_allocated_mb=3800), req()),
        Reason.SANDBOX_COUNT: (node(sandboxes=2000), req()),
    }
    for reason, (n, r) in cases.items():
        assert reject_reason(n, r, CFG) is reason
        result = place((n,), r, CFG)
        assert isinstance(result, NoPlacement) and result.reasons == {"n1": reason}
    assert reject_reason(node(), req(), CFG) is None


def test_inflight_counts_against_capacity() -> None:
    n = node(cpu_capacity=1, inflight_cpu=3)  # limit 4 with 4x overcommit
    assert reject_reason(n, req(), CFG) is Reason.CPU
    n = node(memory_capacity_mb=1024, inflight_memory_mb=600)
    assert reject_reason(n, req(), CFG) is Reason.MEMORY


def test_no_nodes_describes_itself() -> None:
    result = place((), req(), CFG)
    assert isinstance(result, NoPlacement)
    assert result.describe() == "no nodes are registered"


def test_describe_counts_reasons() -> None:
    result = place(
        (node("a", draining=True), node("b", draining=True), node("c", cpu_allocated=16)),
        req(),
        CFG,
    )
    assert isinstance(result, NoPlacement)
    assert result.describe() == "no node can take the sandbox: cpu (1), draining (2)"


def test_latency_picks_least_loaded() -> None:
    cfg = SchedulerConfig(strategy=Strategy.LATENCY)
    busy, idle = node("a", cpu_allocated=8), node("b", cpu_allocated=2)
    result = place((busy, idle), req(), cfg)
    assert isinstance(result, Placement) and result.ranked == ("b", "a")


def test_cost_picks_cheapest_then_packs() -> None:
    cfg = SchedulerConfig(strategy=Strategy.COST)
    cheap_full = node("a", cost=1.0, cpu_allocated=8)
    cheap_empty = node("b", cost=1.0)
    dear = node("c", cost=2.0)
    result = place((dear, cheap_empty, cheap_full), req(), cfg)
    assert isinstance(result, Placement) and result.ranked == ("a", "b", "c")


def test_balanced_weighs_cost_and_load() -> None:
    cfg = SchedulerConfig(strategy=Strategy.BALANCED)
    dear_idle = node("a", cost=1.1)
    cheap_busy = node("b", cost=1.0, cpu_allocated=12)
    result = place((dear_idle, cheap_busy), req(), cfg)
    assert isinstance(result, Placement) and result.node_id == "a"


def test_burst_spreads_when_reservations_are_counted() -> None:
    """100 creates placed back to back before any finishes split evenly over 4 nodes."""
    nodes = {f"n{i}": node(f"n{i}", cpu_capacity=64, memory_capacity_mb=65536) for i in range(4)}
    for strategy in (Strategy.BALANCED, Strategy.LATENCY):
        views = dict(nodes)
        cfg = SchedulerConfig(strategy=strategy)
        for _ in range(100):
            result = place(tuple(views.values()), req(), cfg)
            assert isinstance(result, Placement)
            v = views[result.node_id]
            views[result.node_id] = replace(
                v,
                inflight_cpu=v.inflight_cpu + 2,
                inflight_memory_mb=v.inflight_memory_mb + 512,
                inflight_sandboxes=v.inflight_sandboxes + 1,
            )
        assert sorted(v.inflight_sandboxes for v in views.values()) == [25, 25, 25, 25]


views_st = st.lists(
    st.builds(
        NodeView,
        node_id=st.text("abcdefgh", min_size=1, max_size=4),
        last_seen=st.sampled_from([NOW, NOW - timedelta(seconds=30)]),
        cpu_capacity=st.integers(0, 16),
        memory_capacity_mb=st.integers(0, 8192),
        cpu_allocated=st.integers(0, 64),
        memory_allocated_mb=st.integers(0, 8192),
        sandboxes=st.integers(0, 2500),
        inflight_cpu=st.integers(0, 8),
        inflight_memory_mb=st.integers(0, 2048),
        inflight_sandboxes=st.integers(0, 4),
        templates=st.frozensets(st.sampled_from(["base", "ci"])),
        draining=st.booleans(),
        cost=st.floats(0.1, 10),
    ),
    max_size=8,
    unique_by=lambda v: v.node_id,
)


@given(
    views_st,
    st.sampled_from(list(Strategy)),
    st.integers(1, 8),
    st.integers(128, 4096),
    st.frozensets(st.text("abcdefgh", min_size=1, max_size=4)),
)
def test_placement_invariants(
    views: list[NodeView], strategy: Strategy, cpu: int, mem: int, exclude: frozenset[str]
) -> None:
    cfg = SchedulerConfig(strategy=strategy)
    request = PlacementRequest("base", cpu, mem, NOW, exclude=exclude)
    snapshot = tuple(views)
    result = place(snapshot, request, cfg)
    feasible = {v.node_id for v in views if reject_reason(v, request, cfg) is None}
    if isinstance(result, Placement):
        # the pick is feasible, ranked lists exactly the feasible nodes, and it is stable
        assert result.node_id in feasible
        assert result.ranked[0] == result.node_id and set(result.ranked) == feasible
        assert place(tuple(reversed(snapshot)), request, cfg) == result
    else:
        # "no placement" only when every node has a reason, and each reason is true
        assert not feasible
        assert set(result.reasons) == {v.node_id for v in views}
        for v in views:
            assert reject_reason(v, request, cfg) is result.reasons[v.node_id]
