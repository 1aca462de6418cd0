"""``hivectl``: a thin synchronous client of host.sock (see docs/host-sock.md).

``hivectl [--socket PATH] [--json] VERB …`` sends one request line, reads the answer and prints it
as an aligned table (or, with ``--json``, the daemon's answer lines verbatim). Its subcommands are
the verb table's ``hivectl`` rows (:mod:`hivecore.verbs.spec`, the light half: no server code).

Exit codes (:mod:`hivecore.errors`): 0 the daemon said ok; 1 it refused (``ok:false``) or the command
line was wrong; 2 the daemon could not be reached or did not answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from hivecore.cli.terminal import escape, escape_block, escape_json
from hivecore.errors import EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, BadInput
from hivecore.sockets.client import Unreachable, exchange
from hivecore.verbs import spec
from hivecore.wire.lines import HOST_SOCK_VERSION, request_line

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_UNREACHABLE", "build_parser", "main"]
NIXOS_SOCKET = "/run/hyperhive/host.sock"
LOCAL_SOCKET = "./hive-state/run/host.sock"
ADMIN_GROUP = "hive-admin"

Response = dict[str, Any]


def default_socket_path() -> str:
    """``$HIVE_HOST_SOCK``, else the NixOS path if it exists, else ``./hive-state/run/host.sock``."""
    env = os.environ.get("HIVE_HOST_SOCK")
    if env:
        return env
    return NIXOS_SOCKET if os.path.exists(NIXOS_SOCKET) else LOCAL_SOCKET


class Request:
    """One host.sock request: ``cmd`` and its fields (shapes: :mod:`hivecore.wire.host`; hivectl
    does not import it, so it starts fast; the tests decode every request hivectl builds with it)."""

    def __init__(self, cmd: str, fields: dict[str, Any] | None = None) -> None:
        self.cmd = cmd
        self.fields = fields or {}

    def line(self) -> bytes:
        return request_line(self.cmd, {k: v for k, v in self.fields.items() if v is not None})


# --- talking to the daemon ---------------------------------------------------------------------------


def answers(path: str, request: Request, timeout: float | None) -> Iterator[tuple[bytes, Response]]:
    """Send ``request``; yield each answer line (raw, decoded) until the daemon closes."""
    first = True
    for line in exchange(path, request.line(), timeout):
        try:
            decoded = json.loads(line)
        except ValueError:
            raise Unreachable(f"unreadable answer from the daemon: {line[:200]!r}") from None
        if not isinstance(decoded, dict) or not isinstance(decoded.get("ok"), bool):
            raise Unreachable(f"unexpected answer from the daemon: {line[:200]!r}")
        if first:
            _check_version(decoded)
            first = False
        yield line, decoded


def _check_version(answer: Response) -> None:
    version = answer.get("version", 0)
    if isinstance(version, int) and version > HOST_SOCK_VERSION:
        _err(
            f"warning: the daemon speaks host.sock version {version}, this hivectl knows "
            f"{HOST_SOCK_VERSION}; continuing (upgrade hivectl if something looks wrong)"
        )


def _err(message: str) -> None:
    # errors quote agent-supplied text: escaped, but a build error keeps its line breaks (nix's
    # ``^`` must stay under the column it points at)
    print(f"hivectl: {escape_block(message)}", file=sys.stderr)


# --- rendering ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell (the last one is not padded); cells are escaped
    (:mod:`hivecore.cli.terminal`): they hold agent-supplied text."""
    rows = [[escape(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _one_line(text: object, limit: int = 60) -> str:
    if not isinstance(text, str) or not text:
        return "-"
    lines = text.strip().splitlines() or ["-"]
    first = lines[0]
    if len(first) > limit:
        return first[: limit - 1] + "…"
    return first + " …" if len(lines) > 1 else first  # say that lines were left out


def status_cells(row: Response) -> list[str]:
    # a transient says what is happening (``restarting``, ``rebuilding``): not a failure
    state = str(row["pending"]) if row.get("pending") else None
    state = state or ("failed" if row.get("failed") else "running" if row.get("running") else "stopped")
    if row.get("stuck"):
        state = "STUCK"
    needs = [k for k in ("login", "update") if row.get(f"needs_{k}")]
    return [
        str(row.get("name", "?")),
        state,
        "yes" if row.get("paused") else "-",
        ",".join(needs) or "-",
        str(row.get("deployed_sha") or "-"),
        str(row.get("pending_reminders", 0)),
        _one_line(row.get("status_text")),
    ]


STATUS_HEADERS = ("NAME", "STATE", "PAUSED", "NEEDS", "SHA", "REMINDERS", "STATUS")


def render_status(answer: Response, names: Sequence[str]) -> str:
    rows = [r for r in answer.get("agent_statuses") or [] if not names or r.get("name") in names]
    if not rows:
        return "no agents" if not names else "no such agents: " + ", ".join(names)
    headers: list[str] = list(STATUS_HEADERS)
    cells = [status_cells(r) for r in rows]
    if any(r.get("last_turn_at") is not None for r in rows):
        headers += ["LAST TURN", "TURNS", "TOKENS", "COST"]
        now = time.time()
        for c, r in zip(cells, rows, strict=True):
            c += usage_cells(r, now)
    if any(r.get("waiting_on_operator_since") is not None for r in rows):
        headers.append("WAITING ON YOU")
        now = time.time()
        for c, r in zip(cells, rows, strict=True):
            since = r.get("waiting_on_operator_since")
            c.append(f"since {age(now - since)}" if isinstance(since, int | float) else "-")
    if any(r.get("url") for r in rows):
        headers.append("URL")
        for c, r in zip(cells, rows, strict=True):
            c.append(str(r.get("url") or "-"))
    out = table(headers, cells)
    stuck = [f"{r.get('name')} is stuck: {r.get('stuck')}" for r in rows if r.get("stuck")]
    return "\n".join([out, *(escape(s) for s in stuck)])


def age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` ago."""
    seconds = max(0.0, seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def tokens_text(n: object) -> str:
    if not isinstance(n, int):
        return "-"
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


def cost_text(usd: object) -> str:
    return f"${usd:.2f}" if isinstance(usd, int | float) else "-"


def usage_cells(row: Response, now: float) -> list[str]:
    """LAST TURN, TURNS, TOKENS, COST (today) of a status row."""
    last = row.get("last_turn_at")
    if not isinstance(last, int | float):
        return ["-", "-", "-", "-"]
    return [
        age(now - last),
        str(row.get("turns_today", 0)),
        tokens_text(row.get("tokens_today")),
        cost_text(row.get("cost_today_usd")),
    ]


def render_usage(answer: Response) -> str:
    rows = answer.get("usage") or []
    if not rows:
        return "no agents"
    now = time.time()
    cells = [
        [
            str(r.get("name")),
            str(r.get("turns_today", 0)),
            tokens_text(r.get("tokens_today", 0)),
            cost_text(r.get("cost_today_usd", 0.0)),
            str(r.get("turns_total", 0)),
            tokens_text(r.get("tokens_total", 0)),
            cost_text(r.get("cost_total_usd", 0.0)),
            age(now - r["last_turn_at"]) if isinstance(r.get("last_turn_at"), int) else "never",
            str(r.get("last_status") or "-"),
        ]
        for r in rows
    ]
    headers = [
        "NAME",
        "TURNS",
        "TOKENS",
        "COST",
        "ALL TURNS",
        "ALL TOKENS",
        "ALL COST",
        "LAST TURN",
        "RESULT",
    ]
    return "today (UTC):\n" + table(headers, cells)


def diff_summary(diff: object) -> str:
    """``2 files +5 -1`` for a unified diff (``-`` when there is none to summarise)."""
    if not isinstance(diff, str) or not diff:
        return "-"
    files = plus = minus = 0
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            files += 1
        elif line.startswith("+") and not line.startswith("+++ "):
            plus += 1
        elif line.startswith("-") and not line.startswith("--- "):
            minus += 1
    if not files:
        return "no change"
    return f"{files} file{'s' if files != 1 else ''} +{plus} -{minus}"


def when(at: object, now: float) -> str:
    """``in 5m``, ``3h ago`` (Unix seconds), or ``-``."""
    if not isinstance(at, int | float):
        return "-"
    if at < now:
        return age(now - at)
    return "in " + age(at - now).removesuffix(" ago")


def render_reminders(answer: Response) -> str:
    rows = answer.get("reminders") or []
    if not rows:
        return "no reminders"
    now = time.time()
    cells = []
    notes = []
    for r in rows:
        tries = int(r.get("attempt_count") or 0)
        cells.append(
            [
                str(r.get("id")),
                str(r.get("agent")),
                when(r.get("due_at"), now),
                str(r.get("status")),
                str(tries),
                _one_line(r.get("message")) + (f" ({r.get('size')} bytes)" if r.get("file_path") else ""),
            ]
        )
        if r.get("last_error"):
            retry = r.get("next_attempt_at")
            notes.append(
                f"reminder {r.get('id')}: last error: {_one_line(r.get('last_error'), 200)}"
                + (f"; next try {when(retry, now)}" if r.get("status") == "pending" else "")
            )
    out = table(["ID", "AGENT", "DUE", "STATUS", "TRIES", "MESSAGE"], cells)
    return "\n".join([out, *(escape(n) for n in notes)])


def render_schedules(answer: Response, *, created: bool = False) -> str:
    rows = answer.get("schedules") or []
    if not rows:
        return "no schedules"
    now = time.time()
    out = []
    for s in rows:
        every = s.get("interval_seconds")
        how = f"every {every} s" if every else "once"
        head = f"schedule {s.get('id')} {s.get('state')} ({how}; next {when(s.get('next_fire_at'), now)})" + (
            f": {_one_line(s.get('description'), 80)}" if s.get("description") else ""
        )
        out.append(("created " if created else "") + head)
        out.append(f"  body: {_one_line(s.get('body'), 100)}")
        for t in s.get("targets") or []:
            result = t.get("last_result") or "not fired yet"
            fired = f" ({when(t.get('last_fired_at'), now)})" if t.get("last_fired_at") else ""
            cancelled = " [cancelled]" if t.get("cancelled_at") else ""
            out.append(f"  {t.get('target')}{cancelled}: {_one_line(result, 100)}{fired}")
    return "\n".join(escape(line) for line in out)


def render_pending(answer: Response, history: bool = True) -> str:
    """The approvals table, then each pending row's review and each failed or denied row's reason."""
    approvals = answer.get("approvals") or []
    if not approvals:
        return "no approvals" if history else "no pending approvals"
    rows = [
        [
            str(a.get("id")),
            str(a.get("agent")),
            str(a.get("kind")),
            str(a.get("fetched_sha") or a.get("commit_ref") or "-")[:12],
            str(a.get("status")),
            files_summary(a.get("files"))
            if isinstance(a.get("files"), list)
            else diff_summary(a.get("diff")),
            str(a.get("requested_at")),
            _one_line(a.get("description") or a.get("note"), 50),
        ]
        for a in approvals
    ]
    out = table(["ID", "AGENT", "KIND", "REF", "STATUS", "CHANGES", "REQUESTED", "DESCRIPTION"], rows)
    reviews = [review_block(a) if a.get("status") == "pending" else reason_block(a) for a in approvals]
    return "\n\n".join([out, *(r for r in reviews if r)])


def reason_block(a: Response) -> str:
    """Why a failed or denied approval ended so (its ``note``, line breaks kept, escaped)."""
    note = a.get("note")
    if a.get("status") not in ("failed", "denied") or not isinstance(note, str) or not note.strip():
        return ""
    word = "failed" if a.get("status") == "failed" else "denied"
    if a.get("resolved_by"):
        word += f" (by {a['resolved_by']})"
    body = escape_block(note).rstrip("\n").splitlines()
    more = len(body) - REVIEW_LINES
    lines = [f"    {line}" for line in body[:REVIEW_LINES]]
    if more > 0:
        lines.append(f"    … {more} more lines (hivectl show {a.get('id')})")
    head = f"#{a.get('id')} {escape(str(a.get('kind')))} {escape(str(a.get('agent')))} {word}:"
    return head + "\n" + "\n".join(lines)


def files_summary(files: list[Any]) -> str:
    """``2 files +5 -1`` from a stored review's complete file list."""
    rows = [f for f in files if isinstance(f, dict)]
    plus = sum(f.get("added") or 0 for f in rows)
    minus = sum(f.get("removed") or 0 for f in rows)
    if not rows:
        return "no change"
    return f"{len(rows)} file{'s' if len(rows) != 1 else ''} +{plus} -{minus}"


REVIEW_LINES = 40
"""Lines of a commit message or a spawn's agent.nix shown under ``hivectl pending`` (``--json``
has everything)."""


def evaluation_lines(a: Response) -> list[str]:
    """The review evaluation of a row (agent text escaped): whether it evaluates, nix's error if
    not, what it changes at runtime (``what: before -> after``); empty when there is none."""
    ev = a.get("evaluation")
    if not isinstance(ev, dict):
        return []
    status = ev.get("status")
    if status == "pending":
        return ["evaluation: pending (hive-c0re is evaluating it in the background)"]
    if status == "cancelled":
        return ["evaluation: stopped (the approval was resolved first)"]
    if status == "failed":
        body = escape_block(str(ev.get("error") or "")).rstrip("\n").splitlines()
        return [
            "evaluation: FAILED: this config does not build (approving it only fails its build); deny it",
            *(f"  {x}" for x in body),
        ]
    changes = [c for c in ev.get("changes") or [] if isinstance(c, dict)]
    if not changes:
        return ["evaluation: ok; nothing changes at runtime"]
    out = ["evaluation: ok; at runtime:"]
    for c in changes:
        before, after = c.get("before"), c.get("after")
        what = escape(str(c.get("what")))
        if before is None and after is None:
            out.append(f"  {what}")
        elif before is None:
            out.append(f"  {what}: (new) {escape(str(after))}")
        elif after is None:
            out.append(f"  {what}: {escape(str(before))} (removed)")
        else:
            out.append(f"  {what}: {escape(str(before))} -> {escape(str(after))}")
    return out


def review_block(a: Response) -> str:
    """What a pending row asks the operator to approve: its evaluation (does it build, what changes
    at runtime), every file (with sizes and cut diffs), the commit messages, or the agent.nix a
    spawn deploys; agent text escaped."""
    lines: list[str] = [f"  {line}" for line in evaluation_lines(a)]
    files = a.get("files")
    if isinstance(files, list):
        for f in files:
            if not isinstance(f, dict):
                continue
            if f.get("binary"):
                counts = f"binary, {f.get('size', '?')} bytes"
            else:
                counts = f"+{f.get('added') or 0} -{f.get('removed') or 0}"
            cut = "  (diff truncated)" if f.get("truncated") else ""
            lines.append(f"  {escape(str(f.get('path')))}  {counts}{cut}")
    for key, title in (("commit_message", "commit message(s)"), ("agent_nix", "agent.nix to deploy")):
        text = a.get(key)
        if isinstance(text, str) and text:
            body = escape_block(text).rstrip("\n").splitlines()
            more = len(body) - REVIEW_LINES
            lines.append(f"  {title}:")
            lines += [f"    {line}" for line in body[:REVIEW_LINES]]
            if more > 0:
                lines.append(f"    … {more} more lines (hivectl --json pending)")
    if not lines:
        return ""
    return f"#{a.get('id')} {escape(str(a.get('kind')))} {escape(str(a.get('agent')))}:\n" + "\n".join(lines)


# --- hivectl show: one approval's full review ---------------------------------------------------------

RESET = "\x1b[0m"
COLOURS = {"bold": "\x1b[1m", "red": "\x1b[31m", "green": "\x1b[32m", "cyan": "\x1b[36m", "dim": "\x1b[2m"}


def use_colour(stream: Any) -> bool:
    """Colour only on a terminal, and not with ``NO_COLOR`` set or ``TERM=dumb``."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _paint(text: str, colour: str | None, on: bool) -> str:
    return f"{COLOURS[colour]}{text}{RESET}" if on and colour and text else text


def _diff_colour(line: str) -> str | None:
    if line.startswith(("diff --git ", "index ", "--- ", "+++ ", "new file", "deleted file", "similarity")):
        return "bold"
    if line.startswith("@@"):
        return "cyan"
    if line.startswith("+"):
        return "green"
    if line.startswith("-"):
        return "red"
    return None


def render_approval(a: Response, colour: bool = False) -> str:
    """Everything stored about one approval (``hivectl show``): what, who, when, its outcome, every
    changed file with its line counts, the commit message(s), the diff or a spawn's agent.nix.
    Agent text is escaped first; colour codes (``colour``) are added to escaped text only."""

    def field(label: str, value: object) -> str | None:
        if value is None or value == "":
            return None
        return f"{_paint(label, 'bold', colour)} {escape(str(value))}"

    head = f"approval #{a.get('id')}: {escape(str(a.get('kind')))} of {escape(str(a.get('agent')))}"
    lines: list[str | None] = [
        _paint(head, "bold", colour),
        field("status:   ", a.get("status")),
        field("requested:", f"{a.get('requested_at')} by {a.get('requester') or '?'}"),
        field("resolved: ", _resolved(a)),
        field("ref:      ", a.get("commit_ref")),
        field("commit:   ", a.get("fetched_sha")),
        field("desc:     ", a.get("description")),
    ]
    out = [line for line in lines if line is not None]
    note = a.get("note")
    if isinstance(note, str) and note.strip():
        word = {"failed": "why it failed", "denied": "why it was denied"}.get(str(a.get("status")), "note")
        out += ["", _paint(f"{word}:", "bold", colour)]
        out += [f"  {line}" for line in escape_block(note).rstrip("\n").splitlines()]
    evaluation = evaluation_lines(a)
    if evaluation:
        failed = evaluation[0].startswith("evaluation: FAILED")
        out += ["", _paint(evaluation[0], "red" if failed else "bold", colour), *evaluation[1:]]
    files = a.get("files")
    if isinstance(files, list):
        out += ["", _paint(f"files ({files_summary(files)}):", "bold", colour)]
        for f in files:
            if not isinstance(f, dict):
                continue
            if f.get("binary"):
                counts = f"binary, {f.get('size', '?')} bytes"
            else:
                counts = f"+{f.get('added') or 0} -{f.get('removed') or 0}"
            cut = "  (diff truncated)" if f.get("truncated") else ""
            out.append(f"  {_paint(counts, 'dim', colour)}  {escape(str(f.get('path')))}{cut}")
    for key, title in (("commit_message", "commit message(s):"), ("agent_nix", "agent.nix to deploy:")):
        text = a.get(key)
        if isinstance(text, str) and text:
            out += ["", _paint(title, "bold", colour)]
            out += [f"  {line}" for line in escape_block(text).rstrip("\n").splitlines()]
    diff = a.get("diff")
    if isinstance(diff, str) and diff:
        out += ["", _paint("diff:", "bold", colour)]
        out += [
            _paint(line, _diff_colour(line), colour) for line in escape_block(diff).rstrip("\n").splitlines()
        ]
    elif a.get("kind") == "apply_commit" and not isinstance(files, list):
        out += ["", "(no review stored: the request did not get as far as pinning a commit)"]
    return "\n".join(out)


def _resolved(a: Response) -> str | None:
    """When an approval was resolved and, from the audit trail, who approved or denied it."""
    when = a.get("resolved_at")
    if when is None:
        return None
    return f"{when} by {a['resolved_by']}" if a.get("resolved_by") else str(when)


def render_inbox(answer: Response) -> str:
    """The operator's messages, oldest first: a header line each, then the body (escaped: agents wrote it)."""
    messages = answer.get("messages") or []
    if not messages:
        return "nobody wrote to you"
    blocks = []
    for m in messages:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(m.get("sent_at") or 0)))
        head = f"#{m.get('id')} {when} from {escape(str(m.get('sender')))}"
        body = escape_block(str(m.get("body") or "")).rstrip("\n")
        blocks.append(head + "\n" + "\n".join(f"  {line}" for line in body.splitlines()))
    return "\n".join(blocks)


def render_questions(answer: Response) -> str:
    """The open questions, oldest first: a header line each (id, who asks whom, age, TTL), the
    question and its options (escaped: agents wrote them)."""
    questions = answer.get("questions") or []
    if not questions:
        return "no open questions"
    now = time.time()
    blocks = []
    for q in questions:
        target = q.get("target") or "you"
        asked = age(now - (q.get("asked_at") or now))
        head = f"#{q.get('id')} {escape(str(q.get('asker')))} asks {escape(str(target))}, {asked}"
        deadline = q.get("deadline_at")
        if isinstance(deadline, int | float):
            head += f" (expires in {max(0, int(deadline - now))}s)"
        lines = [head] + [f"  {line}" for line in escape_block(str(q.get("question") or "")).splitlines()]
        options = q.get("options") or []
        if options:
            pick = "pick any of" if q.get("multi") else "options"
            lines.append(f"  {pick}: " + " | ".join(escape(str(o)) for o in options))
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def render_login(answer: Response) -> str:
    state = answer.get("login") or {}
    name = escape(str(state.get("name", "?")))
    if state.get("logged_in"):
        return f"{name} is logged in ({escape(', '.join(map(str, state.get('via') or [])))})"
    return f"{name} is logged out (needs login)"


def render_env(answer: Response) -> str:
    keys = answer.get("env_keys") or []
    if not keys:
        return "no environment keys"
    return table(["KEY", "FROM"], [[str(k.get("key")), str(k.get("source"))] for k in keys])


def render_alarms(answer: Response) -> str:
    """The raised alarms: level, how long, message (the daemon's words; escaped by :func:`table`)."""
    rows = answer.get("alarms") or []
    if not rows:
        return "no alarms"
    now = time.time()
    cells = [
        [
            str(r.get("level", "")).upper(),
            age(now - r["since"]) if isinstance(r.get("since"), (int, float)) and r["since"] else "-",
            str(r.get("message", "")),
        ]
        for r in rows
    ]
    return table(["LEVEL", "FOR", "ALARM"], cells)


def render_swarm(answer: Response) -> str:
    """``hivectl swarm``: the link's state line, then one row per agent of every hive (a hive without
    agents gets one row); the far hives' words are escaped by :func:`table`."""
    status = answer.get("swarm") or {}
    state = str(status.get("state", "off"))
    if state == "off":
        return "not in a swarm (start hive-c0re serve with --swarm nats://HOST:PORT --hive-name NAME)"
    head = f"hive {escape(str(status.get('hive')))} on {escape(str(status.get('server')))}: {escape(state)}"
    if status.get("error"):
        head += f" ({escape(str(status['error']))})"
    outbox = status.get("outbox")
    if isinstance(outbox, int) and outbox > 0:
        head += f"; outbox {outbox} (mail to other hives waiting for JetStream; it goes on reconnect)"
    waiting = [
        f"{escape(str(h.get('name', '?')))} {h['approvals']}"
        for h in status.get("hives") or []
        if not h.get("local") and isinstance(h.get("approvals"), int) and h["approvals"] > 0
    ]
    if waiting:
        head += (
            "\napprovals pending on other hives (approve them there, or here with 'hivectl approve "
            "ID@HIVE' if that hive lists this one in --swarm-operator-hives): " + ", ".join(waiting)
        )
    now = time.time()
    cells = []
    for h in status.get("hives") or []:
        seen = h.get("last_seen")
        where = "reachable" if h.get("reachable") else "unreachable"
        ago = age(now - seen) if isinstance(seen, (int, float)) else "never"
        name = str(h.get("name", "?")) + (" (this)" if h.get("local") else "")
        agents = h.get("agents") or [{}]
        for a in agents:
            if not a:
                cells.append([name, where, ago, "-", "-", "-"])
                continue
            st = "failed" if a.get("failed") else "running" if a.get("running") else "stopped"
            if a.get("pending"):
                st = str(a["pending"])
            if not h.get("reachable") and not h.get("local"):
                st = f"was {st}"  # as last heard: nobody knows now
            cells.append([name, where, ago, str(a.get("name", "?")), st, _one_line(a.get("status_text"))])
    return head + "\n" + table(["HIVE", "REACH", "SEEN", "AGENT", "STATE", "STATUS"], cells)


def who_text(row: Response) -> str:
    """An audit row's actor in one cell: ``operator/host_sock uid 0 root``, ``operator/dashboard
    session s:… from 127.0.0.1``, ``manager/manager_sock uid 0 root``, ``daemon``."""
    parts = [str(row.get("principal")) + ("" if row.get("via") == "daemon" else f"/{row.get('via')}")]
    if isinstance(row.get("uid"), int):
        parts.append(f"uid {row['uid']}" + (f" {row['user']}" if row.get("user") else ""))
    if row.get("agent") and row.get("principal") == "agent":
        parts.append(str(row["agent"]))
    if row.get("session"):
        parts.append(f"session {row['session']}")
    if row.get("token"):
        parts.append(str(row["token"]))
    if row.get("client"):
        parts.append(f"from {row['client']}")
    return " ".join(parts)


def render_audit(answer: Response) -> str:
    """The audit rows, oldest first (``--json``: every field)."""
    rows = answer.get("audit") or []
    if not rows:
        return "no audit rows"
    cells = []
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(r.get("at") or 0)))
        made = [f"job {j}" for j in r.get("jobs") or []] + [f"approval {a}" for a in r.get("approvals") or []]
        outcome = str(r.get("outcome"))
        if r.get("error"):
            outcome += ": " + _one_line(r.get("error"), 60)
        cells.append(
            [
                str(r.get("seq")),
                when,
                who_text(r),
                str(r.get("verb")),
                _one_line(r.get("subject"), 40),  # a refused request's raw name: agent-supplied
                ", ".join(made) or "-",
                outcome,
            ]
        )
    return table(["SEQ", "TIME (UTC)", "WHO", "VERB", "AGENT", "PRODUCED", "OUTCOME"], cells)


def render_urls(answer: Response) -> str:
    urls = answer.get("urls") or {}
    rows = [[k, str(v)] for k, v in urls.items() if v]
    return table(["WHAT", "URL"], rows) if rows else "no urls"


# --- the command line --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # exit 2 means "daemon unreachable" here, so a usage error is 1
        self.print_usage(sys.stderr)
        self.exit(EXIT_REFUSED, f"{self.prog}: error: {message}\n")


Builder = Callable[[argparse.Namespace], Request]
Done = Callable[[argparse.Namespace], str]


def _builder(cmd: str, fields: Callable[[argparse.Namespace], dict[str, Any]]) -> Builder:
    def build(args: argparse.Namespace) -> Request:
        built = fields(args)
        try:
            routed = spec.swarm_route(cmd, built)  # NAME@HIVE: another hive's (docs/swarm.md)
        except BadInput as exc:
            raise SystemExit(f"hivectl: {exc}") from None
        return Request(*routed) if routed is not None else Request(cmd, built)

    return build


def _lower_first(text: str) -> str:
    """A row's help as an argparse line: lower-case start, no trailing dot."""
    first = text.split(". ")[0].rstrip(".")
    return first[:1].lower() + first[1:]


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help="host.sock path")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print raw answers")
    parser = _Parser(
        prog="hivectl",
        parents=[common],
        description="Control a hyperhive daemon (hive-c0re) over its admin socket.",
        epilog=f"socket: --socket, else $HIVE_HOST_SOCK, else {NIXOS_SOCKET} if it exists, else "
        f"{LOCAL_SOCKET}. Exit codes: 0 ok, 1 refused or usage error, 2 daemon unreachable.",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for an answer (300)")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    for verb in spec.on("hivectl"):
        for command in verb.commands:
            text = command.help or _lower_first(verb.help)
            p = sub.add_parser(command.name, help=text, description=text, parents=[common])
            p.set_defaults(build=_builder(verb.cmd, command.fields), done=command.done)
            for arg in command.args:
                p.add_argument(*arg.flags, **arg.options)
    return parser


WATCH_WIDTHS = (8, 10, 7, 6, 13, 12, 9)


def watch_line(cells: Sequence[str]) -> str:
    """A fixed-width row for ``watch`` (rows arrive one at a time, so widths cannot be measured)."""
    cells = [escape(c) for c in cells]
    padded = [c.ljust(w) for c, w in zip(cells, WATCH_WIDTHS, strict=False)]
    return "  ".join([*padded, *cells[len(WATCH_WIDTHS) :]]).rstrip()


def run(args: argparse.Namespace) -> int:
    path = getattr(args, "socket", None) or default_socket_path()
    as_json = getattr(args, "json", False)
    request: Request = args.build(args)
    watching = request.cmd == "subscribe_agent_status"
    timeout = None if watching else args.timeout
    for n, (raw, answer) in enumerate(answers(path, request, timeout)):
        if as_json:
            print(escape_json(raw.decode(errors="replace")), flush=watching)
        if not answer["ok"]:
            if not as_json:
                _err(str(answer.get("error") or "refused (no reason given)"))
            return EXIT_REFUSED
        if as_json:
            continue
        if watching:
            if n == 0:
                print(watch_line(["TIME", *STATUS_HEADERS]), flush=True)
            for row in answer.get("agent_statuses") or []:
                print(watch_line([time.strftime("%H:%M:%S"), *status_cells(row)]), flush=True)
        elif request.cmd == "list":
            print("\n".join(escape(str(a)) for a in answer.get("agents") or []) or "no agents")
        elif request.cmd == "agent_status":
            print(render_status(answer, args.names))
        elif request.cmd == "pending":
            print(render_pending(answer, history=args.all))
        elif request.cmd == "approval":
            for a in answer.get("approvals") or []:
                print(render_approval(a, colour=use_colour(sys.stdout)))
        elif request.cmd == "get_logs":
            print_lines(answer)
        elif request.cmd == "op_send":
            n = len(answer.get("ids") or [])
            print(f"sent to {escape(args.to)} ({n} message{'s' if n != 1 else ''})")
        elif request.cmd == "urls":
            print(render_urls(answer))
        elif request.cmd == "operator_inbox":
            print(render_inbox(answer))
        elif request.cmd in ("login", "logout"):
            print(render_login(answer))
        elif request.cmd == "agent_env":
            print(render_env(answer))
        elif request.cmd == "usage":
            print(render_usage(answer))
        elif request.cmd == "alarms":
            print(render_alarms(answer))
        elif request.cmd == "questions":
            print(render_questions(answer))
        elif request.cmd == "reminders":
            print(render_reminders(answer))
        elif request.cmd in ("schedules", "schedule", "unschedule"):
            print(render_schedules(answer, created=request.cmd == "schedule"))
        elif request.cmd == "swarm_status":
            print(render_swarm(answer))
        elif request.cmd == "audit" and answer.get("audit") is not None:
            print(render_audit(answer))
        elif request.cmd == "agent_config":
            print(render_agent_config(answer))
        elif request.cmd == "state_file":
            print(render_state_file(answer))
        elif answer.get("message"):  # the daemon says what happened (start: "already running")
            print(escape(str(answer["message"])))
        elif args.done is not None:
            approval = answer.get("approval_id")
            print(args.done(args) + (f" (approval {approval})" if isinstance(approval, int) else ""))
    if watching:
        _err("the daemon ended the stream (it stopped, or dropped this slow watcher); run watch again")
        return EXIT_UNREACHABLE
    return EXIT_OK


def render_agent_config(answer: Response) -> str:
    """``config NAME``: a header line, then the applied ``agent.nix`` (escaped: the agent's text)."""
    c = answer.get("agent_config") or {}
    sha, deployed = str(c.get("sha") or "?"), c.get("deployed_sha")
    runs = ""
    if deployed and deployed != sha:
        runs = f"; it runs {escape(str(deployed))[:12]} (needs an update)"
    head = f"# agent.nix of {escape(str(c.get('name')))} at applied main {escape(sha)[:12]}{runs}"
    text = c.get("agent_nix")
    if text is None:
        return head + "\n(applied main has no agent.nix)"
    cut = "\n… cut at 256 KiB" if c.get("truncated") else ""
    return head + "\n" + escape_block(str(text)).rstrip("\n") + cut


def render_state_file(answer: Response) -> str:
    """``state-file NAME PATH``: the file's text, escaped (the agent wrote it)."""
    f = answer.get("state_file") or {}
    if f.get("binary"):
        return f"({escape(str(f.get('path')))}: {f.get('size')} bytes, not UTF-8 text)"
    return escape_block(str(f.get("text") or "")).rstrip("\n")


def print_lines(answer: Response) -> None:
    """A ``get_logs`` answer's lines, escaped (the agent wrote them)."""
    for line in answer.get("lines") or []:
        print(escape(str(line)), flush=True)


FOLLOW_INTERVAL = 1.0
"""Seconds between two polls of ``hivectl logs -f``."""


def follow(args: argparse.Namespace) -> int:
    """``logs -f``: the last lines, then every complete line written since, polling ``get_logs``
    with the offset each answer gives (client-side: host.sock answers one request per line)."""
    path = getattr(args, "socket", None) or default_socket_path()
    as_json = getattr(args, "json", False)
    offset: int | None = None
    while True:
        fields: dict[str, Any] = {"name": args.name, "lines": args.lines if offset is None else MAX_FOLLOW}
        if offset is not None:
            fields["offset"] = offset
        for raw, answer in answers(path, Request("get_logs", fields), args.timeout):
            if not answer["ok"]:
                if as_json:
                    print(escape_json(raw.decode(errors="replace")), flush=True)
                else:
                    _err(str(answer.get("error") or "refused (no reason given)"))
                return EXIT_REFUSED
            if as_json:
                if answer.get("lines") or offset is None:
                    print(escape_json(raw.decode(errors="replace")), flush=True)
            else:
                print_lines(answer)
            end = answer.get("log_offset")
            offset = end if isinstance(end, int) else 0
        time.sleep(FOLLOW_INTERVAL)


MAX_FOLLOW = 500


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb in ("start", "stop") and not args.names and not args.all:
        parser.error(f"{args.verb}: name at least one agent, or use --all")
    try:
        if args.verb == "logs" and args.follow:
            return follow(args)
        return run(args)
    except Unreachable as exc:
        _err(str(exc))
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_OK if args.verb == "watch" or (args.verb == "logs" and args.follow) else 130
    except BrokenPipeError:  # stdout closed early (hivectl watch | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
