"""host.sock wire records, sans-IO: request parsing, error messages, framing and golden answer bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivecore.models import Approval
from hivecore.sockets.framing import LineBuffer, LineTooLong
from hivecore.wire.host import (
    COMMANDS,
    MAX_LINE,
    OK,
    AgentConfigRequest,
    AgentEnvRequest,
    AgentStatusRequest,
    AgentStatusRow,
    AlarmsRequest,
    ApprovalRequest,
    ApproveRequest,
    AuditRequest,
    CancelReminderRequest,
    DenyRequest,
    DestroyRequest,
    GetLogsRequest,
    HostRequest,
    HostResponse,
    KillRequest,
    LifecycleScope,
    ListRequest,
    LoginRequest,
    LogoutRequest,
    MetaUpdateRequest,
    OperatorInboxRequest,
    OpSendRequest,
    PendingRequest,
    PurgeTombstoneRequest,
    RebuildRequest,
    ReleaseRequest,
    RemindersRequest,
    RequestError,
    RequestSpawnRequest,
    RestartRequest,
    ScheduleRequest,
    SchedulesRequest,
    SetPausedRequest,
    SpawnRequest,
    StartRequest,
    StateFileRequest,
    StopRequest,
    SubscribeAgentStatusRequest,
    SwarmOpRequest,
    SwarmStatusRequest,
    UnscheduleRequest,
    Urls,
    UrlsRequest,
    UsageRequest,
    decode_response,
    encode_request,
    encode_response,
    failure,
    make_urls,
    parse_request,
)
from hivecore.wire.questions import AnswerRequest, CancelQuestionRequest, QuestionsRequest

EVERY_REQUEST: list[tuple[bytes, HostRequest]] = [
    (b'{"cmd":"list"}', ListRequest()),
    (b'{"cmd":"agent_status"}', AgentStatusRequest()),
    (b'{"cmd":"subscribe_agent_status"}', SubscribeAgentStatusRequest()),
    (b'{"cmd":"start","scope":{"agent_names":["x"]}}', StartRequest(scope=LifecycleScope(agent_names=["x"]))),
    (
        b'{"cmd":"stop","scope":{"agents":true},"graceful":false}',
        StopRequest(scope=LifecycleScope(agents=True), graceful=False),
    ),
    (b'{"cmd":"restart","name":"a"}', RestartRequest(name="a")),
    (b'{"cmd":"rebuild","name":"a"}', RebuildRequest(name="a")),
    (b'{"cmd":"kill","name":"a"}', KillRequest(name="a")),
    (b'{"cmd":"destroy","name":"a","purge":true}', DestroyRequest(name="a", purge=True)),
    (b'{"cmd":"spawn","name":"a"}', SpawnRequest(name="a")),
    (b'{"cmd":"request_spawn","name":"a","description":"d"}', RequestSpawnRequest(name="a", description="d")),
    (b'{"cmd":"pending"}', PendingRequest()),
    (b'{"cmd":"pending","only_pending":true}', PendingRequest(only_pending=True)),
    (b'{"cmd":"approval","id":7}', ApprovalRequest(id=7)),
    (b'{"cmd":"get_logs","name":"a","lines":5,"offset":120}', GetLogsRequest(name="a", lines=5, offset=120)),
    (b'{"cmd":"op_send","to":"a","body":"hi"}', OpSendRequest(to="a", body="hi")),
    (b'{"cmd":"operator_inbox","limit":5}', OperatorInboxRequest(limit=5)),
    (b'{"cmd":"approve","id":7}', ApproveRequest(id=7)),
    (b'{"cmd":"deny","id":7,"note":"no"}', DenyRequest(id=7, note="no")),
    (b'{"cmd":"set_paused","name":"a","paused":true}', SetPausedRequest(name="a", paused=True)),
    (b'{"cmd":"urls"}', UrlsRequest()),
    (b'{"cmd":"purge_tombstone","name":"a"}', PurgeTombstoneRequest(name="a")),
    (
        b'{"cmd":"meta_update","inputs":["hyperhive","agent-a"]}',
        MetaUpdateRequest(inputs=["hyperhive", "agent-a"]),
    ),
    (b'{"cmd":"login","name":"a","secret":"k"}', LoginRequest(name="a", secret="k")),
    (b'{"cmd":"logout","name":"a"}', LogoutRequest(name="a")),
    (
        b'{"cmd":"agent_env","name":"a","set":{"K":"v"},"unset":["U"]}',
        AgentEnvRequest(name="a", set={"K": "v"}, unset=["U"]),
    ),
    (b'{"cmd":"usage","name":"a"}', UsageRequest(name="a")),
    (b'{"cmd":"questions"}', QuestionsRequest()),
    (b'{"cmd":"answer","id":3,"answer":"yes"}', AnswerRequest(id=3, answer="yes")),
    (b'{"cmd":"cancel_question","id":3}', CancelQuestionRequest(id=3)),
    (b'{"cmd":"reminders","name":"a","done":true}', RemindersRequest(name="a", done=True)),
    (b'{"cmd":"cancel_reminder","id":3}', CancelReminderRequest(id=3)),
    (b'{"cmd":"schedules","done":true}', SchedulesRequest(done=True)),
    (
        b'{"cmd":"schedule","to":["a","b"],"body":"hi","every":"1h","description":"d"}',
        ScheduleRequest(to=["a", "b"], body="hi", every="1h", description="d"),
    ),
    (b'{"cmd":"unschedule","id":3,"target":"a"}', UnscheduleRequest(id=3, target="a")),
    (b'{"cmd":"release","name":"a"}', ReleaseRequest(name="a")),
    (b'{"cmd":"alarms"}', AlarmsRequest()),
    (b'{"cmd":"swarm_status"}', SwarmStatusRequest()),
    (
        b'{"cmd":"swarm_op","op":"stop","target":"worker@beta"}',
        SwarmOpRequest(op="stop", target="worker@beta"),
    ),
    (
        b'{"cmd":"swarm_op","op":"deny","target":"7@beta","graceful":false,"note":"no","timeout":5.0}',
        SwarmOpRequest(op="deny", target="7@beta", graceful=False, note="no", timeout=5.0),
    ),
    (b'{"cmd":"audit"}', AuditRequest()),
    (
        b'{"cmd":"audit","since":1764540000.5,"agent":"a","before":9,"limit":5,"verify":true}',
        AuditRequest(since=1764540000.5, agent="a", before=9, limit=5, verify=True),
    ),
    (b'{"cmd":"agent_config","name":"a"}', AgentConfigRequest(name="a")),
    (b'{"cmd":"state_file","name":"a","path":"notes.md"}', StateFileRequest(name="a", path="notes.md")),
]


@pytest.mark.parametrize(("line", "expected"), EVERY_REQUEST, ids=[r.CMD for _, r in EVERY_REQUEST])
def test_every_verb_parses_and_round_trips(line: bytes, expected: HostRequest) -> None:
    assert parse_request(line) == expected
    encoded = encode_request(expected)
    assert encoded.startswith(b'{"cmd":"' + expected.CMD.encode() + b'"')
    assert encoded.endswith(b"\n")
    assert parse_request(encoded.rstrip(b"\n")) == expected


def test_every_command_is_covered() -> None:
    assert sorted({r.CMD for _, r in EVERY_REQUEST}) == sorted(COMMANDS)


def test_defaults_and_unknown_keys() -> None:
    # optional fields default; keys from a newer client are ignored
    assert parse_request(b'{"cmd":"destroy","name":"a"}') == DestroyRequest(name="a", purge=False)
    assert parse_request(b'{"cmd":"stop","scope":{"agent_names":["a"]}}') == StopRequest(
        scope=LifecycleScope(agent_names=["a"]), graceful=True
    )
    assert parse_request(b'{"cmd":"start"}') == StartRequest(scope=LifecycleScope())
    assert parse_request(b'{"cmd":"list","node":"h2","x":{"y":[1]}}') == ListRequest()
    assert parse_request(b' {"cmd":"list"}\r') == ListRequest()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"cmd":"frobnicate"}', 'unknown cmd "frobnicate"'),
        (b'{"cmd":""}', 'unknown cmd ""'),
        (b'{"name":"a"}', 'request has no "cmd" field'),
        (b'{"cmd":5}', 'field "cmd" must be a string, got number'),
        (b'{"cmd":["list"]}', 'field "cmd" must be a string, got array'),
        (b"[1,2]", "request must be a JSON object, got array"),
        (b'"list"', "request must be a JSON object, got string"),
        (b"null", "request must be a JSON object, got null"),
        (b"list", "request is not valid JSON: Expecting value (column 1)"),
        (b'{"cmd":"list"', "request is not valid JSON: Expecting ',' delimiter (column 14)"),
        (b"\xff\xfe", "request is not valid UTF-8 (byte 0)"),
        (b"", 'empty request; send one JSON object per line, e.g. {"cmd":"list"}'),
        (b"   ", 'empty request; send one JSON object per line, e.g. {"cmd":"list"}'),
        (b"[" * 5000 + b"]" * 5000, "request is not valid JSON: nested too deeply"),
        (b'{"cmd":"approve"}', "bad \"approve\" request: field 'id': required field missing"),
        (b'{"cmd":"approve","id":"7"}', "bad \"approve\" request: field 'id': expected int, got str"),
        (b'{"cmd":"approve","id":true}', "bad \"approve\" request: field 'id': expected int, got bool"),
        (b'{"cmd":"approve","id":7.5}', "bad \"approve\" request: field 'id': expected int, got float"),
        (
            b'{"cmd":"restart","name":null}',
            "bad \"restart\" request: field 'name': expected str, got NoneType",
        ),
        (
            b'{"cmd":"set_paused","name":"a"}',
            "bad \"set_paused\" request: field 'paused': required field missing",
        ),
        (
            b'{"cmd":"set_paused","name":"a","paused":"yes"}',
            "bad \"set_paused\" request: field 'paused': expected bool, got str",
        ),
        (
            b'{"cmd":"start","scope":"x"}',
            "bad \"start\" request: field 'scope': expected an object, got string",
        ),
        (
            b'{"cmd":"start","scope":{"agent_names":"abc"}}',
            "bad \"start\" request: field 'scope.agent_names': expected an array, got string",
        ),
        (
            b'{"cmd":"stop","scope":{"agent_names":["a",1]}}',
            "bad \"stop\" request: field 'scope.agent_names[1]': expected str, got int",
        ),
        (
            b'{"cmd":"stop","scope":{"agents":1}}',
            "bad \"stop\" request: field 'scope.agents': expected bool, got int",
        ),
    ],
)
def test_bad_requests_say_what_was_wrong(line: bytes, message: str) -> None:
    assert parse_request(line) == RequestError(message)


def test_over_long_line_is_refused() -> None:
    line = b'{"cmd":"list","pad":"' + b"x" * MAX_LINE + b'"}'
    assert parse_request(line) == RequestError(f"request line exceeds {MAX_LINE} bytes")


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert isinstance(parse_request(data), HostRequest | RequestError)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


# generation cost varies a lot between machines; the check is about the parser, not about speed
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(COMMANDS),
    st.dictionaries(
        st.sampled_from(["name", "id", "scope", "paused", "purge", "graceful", "note", "description"]), JSON
    ),
)
def test_arbitrary_fields_for_known_verbs_never_raise(cmd: str, fields: dict[str, object]) -> None:
    line = json.dumps({"cmd": cmd, **fields}).encode()
    result = parse_request(line)
    assert isinstance(result, HostRequest | RequestError)
    if isinstance(result, RequestError):
        assert result.message.startswith(f'bad "{cmd}" request: ')


# --- framing ----------------------------------------------------------------------------------------


def test_line_buffer_splits_and_joins() -> None:
    buf = LineBuffer()
    buf.feed(b'{"cmd":')
    assert buf.next_line() is None
    buf.feed(b'"list"}\n{"cmd"')
    assert buf.next_line() == b'{"cmd":"list"}'
    assert buf.next_line() is None
    assert buf.rest() == b'{"cmd"'


def test_line_buffer_cap() -> None:
    buf = LineBuffer(max_line=10)
    buf.feed(b"0123456789")
    assert buf.next_line() is None  # exactly at the cap is fine
    buf.feed(b"\n")
    assert buf.next_line() == b"0123456789"
    buf.feed(b"01234567890")
    with pytest.raises(LineTooLong):
        buf.next_line()
    buf = LineBuffer(max_line=10)
    buf.feed(b"0123456789ab\n")  # over the cap even though the newline is there
    with pytest.raises(LineTooLong):
        buf.next_line()


# --- golden bytes -----------------------------------------------------------------------------------


def test_golden_list() -> None:
    assert encode_response(HostResponse(ok=True, agents=["a", "hm1nd"])) == (
        b'{"version":1,"ok":true,"agents":["a","hm1nd"]}\n'
    )


def test_golden_agent_status() -> None:
    bare = AgentStatusRow(name="a", running=True, failed=False, needs_update=False, needs_login=False)
    full = AgentStatusRow(
        name="b",
        running=True,
        failed=False,
        needs_update=True,
        needs_login=False,
        deployed_sha="1bfaf24abcde",
        pending_reminders=2,
        paused=True,
        parent="hm1nd",
        active_model="opus",
        status_text="reading",
        status_set_at="2026-09-12T09:15:00Z",
        url="https://hive.example/agent/b/",
    )
    assert encode_response(HostResponse(ok=True, agent_statuses=[bare, full])) == (
        b'{"version":1,"ok":true,"agent_statuses":['
        b'{"name":"a","running":true,"failed":false,"needs_update":false,"needs_login":false,'
        b'"pending_reminders":0,"paused":false},'
        b'{"name":"b","running":true,"failed":false,"needs_update":true,"needs_login":false,'
        b'"deployed_sha":"1bfaf24abcde","pending_reminders":2,"paused":true,"parent":"hm1nd",'
        b'"active_model":"opus","status_text":"reading","status_set_at":"2026-09-12T09:15:00Z",'
        b'"url":"https://hive.example/agent/b/"}]}\n'
    )


def test_golden_pending() -> None:
    assert encode_response(HostResponse(ok=True, approvals=[])) == b'{"version":1,"ok":true,"approvals":[]}\n'
    approval = Approval(
        id=7,
        agent="x",
        kind="merge_config_pr",
        commit_ref="12",
        fetched_sha="1bfaf24abcde",
        requested_at="2026-09-12T09:15:00Z",
        status="pending",
    )
    assert encode_response(HostResponse(ok=True, approvals=[approval])) == (
        b'{"version":1,"ok":true,"approvals":[{"id":7,"agent":"x","kind":"merge_config_pr","commit_ref":"12",'
        b'"fetched_sha":"1bfaf24abcde","requested_at":"2026-09-12T09:15:00Z","status":"pending"}]}\n'
    )


def test_golden_urls() -> None:
    local = make_urls(None, "127.0.0.1", 7000)
    assert encode_response(HostResponse(ok=True, urls=local)) == (
        b'{"version":1,"ok":true,"urls":{"home":"http://127.0.0.1:7000/"}}\n'
    )
    public = make_urls("hive.example", "127.0.0.1", 7000)
    assert encode_response(HostResponse(ok=True, urls=public)) == (
        b'{"version":1,"ok":true,"urls":{"domain":"hive.example","home":"https://hive.example/"}}\n'
    )


def test_golden_errors_and_bare_success() -> None:
    assert encode_response(OK) == b'{"version":1,"ok":true}\n'
    assert encode_response(failure('agent "ghost" is not managed by this hive')) == (
        b'{"version":1,"ok":false,"error":"agent \\"ghost\\" is not managed by this hive"}\n'
    )
    assert (
        encode_response(failure('unknown cmd "x"'))
        == b'{"version":1,"ok":false,"error":"unknown cmd \\"x\\""}\n'
    )


def test_urls_for_wildcard_and_ipv6_binds() -> None:
    assert make_urls(None, "0.0.0.0", 7000) == Urls(home="http://localhost:7000/")
    assert make_urls(None, "::1", 7000) == Urls(home="http://[::1]:7000/")


def test_decode_response_tolerates_old_and_new_daemons() -> None:
    old = decode_response(b'{"ok":false,"error":"nope"}')
    assert (old.version, old.ok, old.error) == (0, False, "nope")
    newer = decode_response(b'{"version":2,"ok":true,"agents":["a"],"quota":{"x":1}}')
    assert (newer.version, newer.agents) == (2, ["a"])


def test_golden_purge_tombstone_request() -> None:
    assert encode_request(PurgeTombstoneRequest(name="old")) == b'{"cmd":"purge_tombstone","name":"old"}\n'
    assert parse_request(b'{"cmd":"purge_tombstone"}') == RequestError(
        "bad \"purge_tombstone\" request: field 'name': required field missing"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"cmd":"list","x":' + b"9" * 5000 + b"}", "request has a number with more than 4300 digits"),
        (b'{"cmd":"approve","id":-' + b"1" * 4301 + b"}", "request has a number with more than 4300 digits"),
        (b'{"cmd":"\\ud800"}', "bad request: field 'cmd': text contains a lone surrogate (U+D800 at"),
        (b'{"cmd":"\xed\xa0\x80"}', "request is not valid UTF-8 (byte 8)"),
    ],
)
def test_huge_numbers_surrogates_and_bad_utf8_are_refused(line: bytes, message: str) -> None:
    answer = parse_request(line)
    assert isinstance(answer, RequestError)
    assert answer.message.startswith(message)


def test_an_answer_echoing_a_lone_surrogate_is_still_one_utf8_line() -> None:
    answer = parse_request(b'{"cmd":"\\ud800"}')
    assert isinstance(answer, RequestError)
    line = encode_response(failure(answer.message))
    assert line == (
        b'{"version":1,"ok":false,"error":"bad request: field \'cmd\': text contains a lone surrogate '
        b'(U+D800 at character 0); send valid Unicode"}\n'
    )
    line.decode("utf-8")  # valid UTF-8: the bad cmd is named, not echoed
    # any other string with a surrogate in it is escaped the same way; plain text stays UTF-8
    assert encode_response(failure("é\udc80")) == b'{"version":1,"ok":false,"error":"\\u00e9\\udc80"}\n'
    assert encode_response(failure("é")) == '{"version":1,"ok":false,"error":"é"}\n'.encode()
