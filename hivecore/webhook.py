"""Notifications to the operator's endpoints (``--notify-url``, ``--notify-on``): what is sent, pure.

:func:`parse_endpoint` reads one ``--notify-url``: ``http://`` / ``https://`` get a small JSON
document (``application/json``); ``ntfy+http://`` / ``ntfy+https://`` (an ntfy-style endpoint: the
topic's URL with ``ntfy+`` in front) get the one-line text as a ``text/plain`` body with ``Title``,
``Priority`` and ``Tags`` headers. :func:`notice_of` turns a dashboard event into a
:class:`Notice` when its kind is selected (:data:`KINDS`), else None. :func:`backoff` is the retry
schedule. :mod:`actors.webhooks` does the delivery.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable
from typing import Any, Literal

import attrs

from hivecore.errors import BadInput
from hivecore.secretfile import read_secret_file
from hivecore.wire.events import (
    AgentNotice,
    AlarmCleared,
    AlarmRaised,
    ApprovalAdded,
    ApprovalResolved,
    Event,
    QuestionAdded,
)

KINDS: dict[str, str] = {
    "approval_added": "an approval waits for the operator",
    "question_asked": "an agent asked the operator a question",
    "alarm_raised": "an alarm was raised (docs/operations.md, Alarms)",
    "container_crash": "an agent stopped without a stop request",
    "alarm_cleared": "an alarm no longer holds",
    "approval_resolved": "an approval was approved, denied or failed",
}
"""What ``--notify-on`` may name, with what each means."""
DEFAULT_KINDS: tuple[str, ...] = ("approval_added", "question_asked", "alarm_raised", "container_crash")
MAX_TEXT = 300
"""Characters of a notice's text (one line)."""

Format = Literal["json", "ntfy"]


@attrs.frozen
class Endpoint:
    url: str
    """Where the POST goes (``ntfy+`` removed)."""
    format: Format
    shown: str
    """The URL without its path, query or credentials (logs and alarms: a webhook URL is a secret)."""


@attrs.frozen
class Notice:
    kind: str
    text: str
    """One line, at most :data:`MAX_TEXT` characters."""
    title: str
    seq: int
    agent: str | None = None
    level: str = "info"
    """``info``, ``warn`` or ``crit``."""
    ref: int | str | None = None
    """The approval's or question's id, or the alarm's key."""

    def document(self, at: float) -> dict[str, Any]:
        """The JSON body: ``{kind, title, text, agent, level, ref, seq, at}`` (``at``: Unix seconds)."""
        return {
            "kind": self.kind,
            "title": self.title,
            "text": self.text,
            "agent": self.agent,
            "level": self.level,
            "ref": self.ref,
            "seq": self.seq,
            "at": at,
        }

    def ntfy_headers(self) -> dict[str, str]:
        priority = {"crit": "high", "warn": "default"}.get(self.level, "default")
        # header values must be ASCII: a title naming an agent is, the rest is replaced
        title = self.title.encode("ascii", "replace").decode()
        return {"Title": title, "Priority": priority, "Tags": self.kind}


def parse_endpoint(raw: str) -> Endpoint:
    """One ``--notify-url`` (:class:`BadInput` naming what is wrong)."""
    fmt: Format = "json"
    url = raw.strip()
    if url.startswith("ntfy+"):
        fmt = "ntfy"
        url = url[len("ntfy+") :]
    try:
        parts = urllib.parse.urlsplit(url)
        _port = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError as exc:
        raise BadInput(f"--notify-url is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(
            "--notify-url takes http(s)://HOST/… (a JSON POST) or ntfy+http(s)://HOST/TOPIC (a text "
            f"POST to an ntfy-style topic), not {_shown(parts)}"
        )
    if any(c.isspace() for c in url):
        raise BadInput(f"--notify-url {_shown(parts)} contains whitespace")
    return Endpoint(url, fmt, ("ntfy+" if fmt == "ntfy" else "") + _shown(parts))


def _shown(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or '?'}://{host}{port}/…"


MAX_URL_FILE = 64 * 1024


def read_url_file(path: str) -> list[str]:
    """The URLs of ``--notify-url-file`` (one a line; blank lines and ``#`` comments skipped), each
    checked by :func:`parse_endpoint`. The file holds secrets: it must be a regular file (no link
    followed), root's or the daemon's, and readable by nobody else (:class:`BadInput` says why not).
    Blocking (the daemon reads it once, at start)."""
    text = read_secret_file(path, f"--notify-url-file {path}", MAX_URL_FILE, BadInput)
    urls = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    for n, url in enumerate(urls, 1):
        try:
            parse_endpoint(url)
        except BadInput as exc:
            raise BadInput(f"--notify-url-file {path}, URL {n}: {exc}") from None
    return urls


def parse_kinds(raw: Iterable[str]) -> frozenset[str]:
    """``--notify-on`` values (each comma-separated) as a set of :data:`KINDS` (:class:`BadInput`)."""
    kinds = {k.strip() for item in raw for k in item.split(",") if k.strip()}
    unknown = sorted(kinds - KINDS.keys())
    if unknown:
        raise BadInput(f"--notify-on: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    if not kinds:
        raise BadInput("--notify-on names no kind")
    return frozenset(kinds)


def one_line(text: str, limit: int = MAX_TEXT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def notice_of(event: Event, kinds: frozenset[str]) -> Notice | None:
    """The notice for ``event`` when its kind is in ``kinds``, else None."""
    notice: Notice | None = None
    match event:
        case ApprovalAdded():
            what = event.description or event.commit_ref or ""
            notice = Notice(
                "approval_added",
                one_line(
                    f"approval {event.id}: {event.approval_kind} for {event.agent}"
                    + (f": {what}" if what else "")
                ),
                f"hive: approval {event.id} for {event.agent}",
                event.seq,
                agent=event.agent,
                ref=event.id,
            )
        case ApprovalResolved():
            notice = Notice(
                "approval_resolved",
                one_line(
                    f"approval {event.id} for {event.agent}: {event.status}"
                    + (f" ({event.note})" if event.note else "")
                ),
                f"hive: approval {event.id} {event.status}",
                event.seq,
                agent=event.agent,
                ref=event.id,
            )
        case QuestionAdded() if event.target is None:
            notice = Notice(
                "question_asked",
                one_line(f"{event.asker} asks: {event.question}"),
                f"hive: {event.asker} asks you",
                event.seq,
                agent=event.asker,
                ref=event.id,
            )
        case AlarmRaised():
            notice = Notice(
                "alarm_raised",
                one_line(event.message),
                f"hive alarm: {event.key}",
                event.seq,
                agent=event.agent,
                level=event.level,
                ref=event.key,
            )
        case AlarmCleared():
            notice = Notice(
                "alarm_cleared",
                one_line(f"cleared: {event.key}"),
                f"hive alarm cleared: {event.key}",
                event.seq,
                agent=event.agent,
                ref=event.key,
            )
        case AgentNotice() if event.event == "container_crash":
            notice = Notice(
                "container_crash",
                one_line(f"{event.agent} crashed" + (f": {event.note}" if event.note else "")),
                f"hive: {event.agent} crashed",
                event.seq,
                agent=event.agent,
                level="warn",
            )
    if notice is None or notice.kind not in kinds:
        return None
    return notice


def event_kinds_for(kinds: frozenset[str]) -> list[str]:
    """The bus event kinds a subscription needs for ``kinds``."""
    table = {
        "approval_added": ApprovalAdded.KIND,
        "approval_resolved": ApprovalResolved.KIND,
        "question_asked": QuestionAdded.KIND,
        "alarm_raised": AlarmRaised.KIND,
        "alarm_cleared": AlarmCleared.KIND,
        "container_crash": AgentNotice.KIND,
    }
    return sorted({table[k] for k in kinds})


def backoff(attempt: int, initial: float, cap: float) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): ``initial`` doubled each time, capped."""
    return min(cap, initial * 2.0 ** (attempt - 1))


def retryable(status: int) -> bool:
    """Whether an HTTP answer is worth retrying (408, 425, 429, 5xx); other 4xx are final."""
    return status in (408, 425, 429) or status >= 500
