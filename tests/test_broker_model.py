"""The broker's lease rules, checked against a model over random operation sequences (real sqlite,
the same SQL the broker runs on the store thread)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from hivecore import store
from hivecore.services import broker as br


@attrs.define
class Model:
    delivered_to: dict[int, int | None] = attrs.field(factory=dict)
    times: dict[int, int] = attrs.field(factory=dict)
    acked: set[int] = attrs.field(factory=set)

    def eligible(self, lease: int, live: set[int]) -> list[int]:
        return [
            i
            for i in sorted(self.delivered_to)
            if i not in self.acked
            and (self.delivered_to[i] is None or self.delivered_to[i] not in live | {lease})
        ]


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 0), st.integers(0, 0)),
        st.tuples(st.just("open"), st.integers(0, 0), st.integers(0, 0)),
        st.tuples(st.just("close"), st.integers(0, 3), st.integers(0, 0)),
        st.tuples(st.just("recv"), st.integers(0, 3), st.integers(1, 3)),
        st.tuples(st.just("ack"), st.integers(0, 3), st.integers(0, 0)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_leases_match_the_model(ops: list[tuple[str, int, int]]) -> None:
    with tempfile.TemporaryDirectory(prefix="hcm", dir="/tmp") as tmp:
        conn = store.connect(Path(tmp) / "db.sqlite")
        with contextlib.closing(conn):
            store.begin_incarnation(conn, "coder", 0)  # as its spawn would
            model = Model()
            leases: list[int] = [1]  # lease ids ever opened, by index
            live: set[int] = {1}
            for op, a, b in ops:
                if op == "send":
                    [i], _ = br._insert(conn, [("system", "coder", "m", None)], 0)
                    model.delivered_to[i] = None
                    model.times[i] = 0
                elif op == "open":
                    leases.append(len(leases) + 1)
                    live.add(leases[-1])
                elif op == "close":
                    live.discard(leases[a % len(leases)])
                elif op == "recv":
                    lease = leases[a % len(leases)]
                    expected = model.eligible(lease, live)[:b]
                    got = br._take(conn, "coder", lease, sorted(live | {lease}), b, 0)
                    assert [d.id for d in got] == expected
                    for d in got:
                        assert d.redelivered == (model.times[d.id] > 0)
                        model.delivered_to[d.id] = lease
                        model.times[d.id] += 1
                elif op == "ack":
                    lease = leases[a % len(leases)]
                    others = live - {lease}
                    expected_acks = {
                        i
                        for i, to in model.delivered_to.items()
                        if to is not None and i not in model.acked and to not in others
                    }
                    assert br._ack(conn, "coder", lease, sorted(live), 0) == len(expected_acks)
                    model.acked |= expected_acks
                # invariants: an acked row is never handed out again; a row held by a live lease
                # belongs to exactly that lease
                rows = {r["id"]: r for r in br.inbox(conn, "coder")}
                assert {i for i, r in rows.items() if r["acked_at"] is not None} == model.acked
                for i, to in model.delivered_to.items():
                    assert rows[i]["lease"] == to
