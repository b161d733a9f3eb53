"""``only_node``: a create from a snapshot may go to the snapshot's node and no other."""

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
    place,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CFG = SchedulerConfig()


def node(node_id: str, **kw: object) -> NodeView:
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


def test_only_the_named_node_even_when_it_is_busier() -> None:
    idle, busy = node("idle"), node("busy", cpu_allocated=12, sandboxes=6)
    assert place((idle, busy), req(), CFG) == Placement("idle", ("idle", "busy"))
    pinned = place((idle, busy), req(only_node="busy"), CFG)
    assert pinned == Placement("busy", ("busy",))


def test_the_named_node_still_has_to_pass_every_check() -> None:
    others = (node("a"), node("b"))
    for reason, target in {
        Reason.UNHEALTHY: node("x", last_seen=NOW - timedelta(seconds=60)),
        Reason.DRAINING: node("x", draining=True),
        Reason.CPU: node("x", cpu_allocated=16),
        Reason.MISSING_TEMPLATE: node("x", templates=frozenset()),
    }.items():
        result = place((*others, target), req(only_node="x"), CFG)
        assert isinstance(result, NoPlacement)
        assert result.reasons == {"a": Reason.OTHER_NODE, "b": Reason.OTHER_NODE, "x": reason}
        assert not result.only_template_missing
        assert "not the required node (2)" in result.describe()


def test_an_unknown_node_places_nowhere() -> None:
    result = place((node("a"),), req(only_node="gone"), CFG)
    assert isinstance(result, NoPlacement) and result.reasons == {"a": Reason.OTHER_NODE}


@given(st.lists(st.integers(0, 15), min_size=1, max_size=6), st.data())
def test_a_placement_is_the_named_node_or_none(loads: list[int], data: st.DataObject) -> None:
    nodes = tuple(node(f"n{i}", cpu_allocated=c) for i, c in enumerate(loads))
    target = data.draw(st.sampled_from([n.node_id for n in nodes]))
    result = place(nodes, req(only_node=target), CFG)
    if isinstance(result, Placement):
        assert result.node_id == target and result.ranked == (target,)
    else:
        assert result.reasons[target] is not Reason.OTHER_NODE
