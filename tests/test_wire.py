"""The one converter: None fields omitted, order kept, unknown keys ignored, old payloads decode."""

from __future__ import annotations

import json

import pytest

from hivecore.models import Approval, ContainerView
from hivecore.wire.converter import describe_error, dumps, loads
from hivecore.wire.events import (
    ApprovalResolved,
    ContainerStateChanged,
    TransientSet,
    event_from_dict,
    event_to_dict,
)
from hivecore.wire.helper import ApprovalResolvedHelper, Rebuilt, helper_from_body, helper_to_body


def test_none_fields_are_omitted_and_order_is_kept() -> None:
    a = Approval(
        id=7, agent="x", kind="spawn", commit_ref="", requested_at="2026-09-12T09:15:00Z", status="pending"
    )
    assert dumps(a) == (
        '{"id":7,"agent":"x","kind":"spawn","commit_ref":"","requested_at":"2026-09-12T09:15:00Z",'
        '"status":"pending"}'
    )
    b = Approval(
        id=7,
        agent="x",
        kind="apply_commit",
        commit_ref="12",
        fetched_sha="1bfaf24abcde",
        requested_at="2026-09-12T09:15:00Z",
        status="denied",
        resolved_at="2026-09-12T10:00:00Z",
        note="no",
        description="d",
    )
    assert list(json.loads(dumps(b))) == [
        "id",
        "agent",
        "kind",
        "commit_ref",
        "fetched_sha",
        "requested_at",
        "status",
        "resolved_at",
        "note",
        "description",
    ]


def test_event_round_trip_has_kind_and_seq() -> None:
    ev = TransientSet(seq=9, name="a", transient_kind="starting", since_unix=100)
    d = event_to_dict(ev)
    assert d["kind"] == "transient_set"
    assert d["seq"] == 9
    assert event_from_dict(d) == ev


def test_old_event_payload_without_newer_fields_still_decodes() -> None:
    # an approval_resolved frame from before `approval_kind`/`sha`/`tag`/`description` existed,
    # and a container row from before `paused`/`pending_reminders`/`url`
    old = {"kind": "approval_resolved", "seq": 3, "id": 1, "agent": "a", "status": "approved"}
    assert event_from_dict(old) == ApprovalResolved(seq=3, id=1, agent="a", status="approved")
    old_row = {
        "kind": "container_state_changed",
        "seq": 4,
        "container": {"name": "a", "container": "h-a", "running": True, "port": 8123},
    }
    ev = event_from_dict(old_row)
    assert isinstance(ev, ContainerStateChanged)
    assert ev.container == ContainerView(name="a", container="h-a", running=True, port=8123)


def test_unknown_keys_from_a_newer_version_are_ignored() -> None:
    new = {
        "kind": "transient_set",
        "seq": 1,
        "name": "a",
        "transient_kind": "stopping",
        "since_unix": 5,
        "node": "h2",
        "colour": "red",
    }
    assert event_from_dict(new) == TransientSet(seq=1, name="a", transient_kind="stopping", since_unix=5)


def test_helper_event_body_round_trip_and_old_body() -> None:
    body = helper_to_body(Rebuilt(agent="coder", ok=False, note="build failed"))
    assert json.loads(body) == {"event": "rebuilt", "agent": "coder", "ok": False, "note": "build failed"}
    assert helper_from_body(body) == Rebuilt(agent="coder", ok=False, note="build failed")
    old = '{"event":"approval_resolved","id":3,"agent":"x","commit_ref":"abc1234","status":"approved"}'
    assert helper_from_body(old) == ApprovalResolvedHelper(
        id=3, agent="x", commit_ref="abc1234", status="approved"
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"agent":"x","ok":"yes","event":"rebuilt"}', "field 'ok': expected bool, got str"),
        ('{"event":"rebuilt","ok":true}', "field 'agent': required field missing"),
    ],
)
def test_bad_payloads_say_what_is_wrong(payload: str, message: str) -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011  # cattrs raises a validation group
        helper_from_body(payload)
    assert message in describe_error(info.value)


def test_ints_and_bools_are_not_coerced() -> None:
    with pytest.raises(Exception) as info:  # noqa: PT011
        loads('{"name":"a","container":"h-a","port":"80"}', ContainerView)
    assert "field 'port': expected int, got str" in describe_error(info.value)
