"""Question wire records (issue 18 item 1): ``ask_operator``, ``ask`` and ``answer`` on the manager and
agent sockets; ``questions``, ``answer`` and ``cancel_question`` on host.sock (and the dashboard).

The checks here are the whole of the stateless validation (one clear error each); what needs state
(does the asked agent exist? is the question open? was it asked of you?) is
:mod:`hivecore.services.questions`'.

Limits are chosen so that a question and its answer always fit a 4 KiB message body together:
:data:`MAX_QUESTION` + :data:`MAX_ANSWER` + the helper event's JSON stays under 4096 bytes, and
the longest multi-choice answer (every option, comma-joined) fits :data:`MAX_ANSWER`.
"""

from __future__ import annotations

import attrs

from hivecore.errors import BadInput
from hivecore.verbs.checks import check, doc
from hivecore.wire.request import Request

MAX_QUESTION = 2048
"""The longest question (UTF-8 bytes)."""
MAX_ANSWER = 1536
"""The longest answer (UTF-8 bytes)."""
MAX_OPTIONS = 12
MAX_OPTION = 80
"""The longest option (UTF-8 bytes); 12 of them comma-joined fit :data:`MAX_ANSWER`."""
MAX_TTL = 7 * 24 * 3600
"""The longest TTL (seconds): a week. No TTL: the question waits until answered or cancelled."""
MAX_QUESTION_ID = 10**18


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def question_text(value: str) -> str:
    """A question: not blank, at most :data:`MAX_QUESTION` bytes."""
    if not value.strip():
        raise BadInput("question is empty")
    if (size := _size(value)) > MAX_QUESTION:
        raise BadInput(
            f"question is {size} bytes; the limit is {MAX_QUESTION}: put the detail in a file and name it"
        )
    return value


def answer_text(value: str) -> str:
    """An answer: not blank, at most :data:`MAX_ANSWER` bytes."""
    if not value.strip():
        raise BadInput("answer is empty")
    if (size := _size(value)) > MAX_ANSWER:
        raise BadInput(f"answer is {size} bytes; the limit is {MAX_ANSWER}")
    return value


def options(value: list[str] | None) -> list[str] | None:
    """At most :data:`MAX_OPTIONS` options, each not blank (stripped), at most :data:`MAX_OPTION`
    bytes, no commas (a multi answer is comma-joined), no two alike."""
    if value is None:
        return None
    if len(value) > MAX_OPTIONS:
        raise BadInput(f"{len(value)} options; at most {MAX_OPTIONS}")
    out: list[str] = []
    for item in value:
        text = item.strip()
        if not text:
            raise BadInput("an option is empty")
        if _size(text) > MAX_OPTION:
            raise BadInput(f"option {text[:20]!r}… is longer than {MAX_OPTION} bytes")
        if "," in text:
            raise BadInput(
                f"option {text[:40]!r} has a comma (a multi-choice answer joins options with commas)"
            )
        if text in out:
            raise BadInput(f"option {text[:40]!r} is listed twice")
        out.append(text)
    return out


def ttl(value: int | None) -> int | None:
    """A TTL in whole seconds, 1 to :data:`MAX_TTL`; None: no TTL."""
    if value is None:
        return None
    if not 1 <= value <= MAX_TTL:
        raise BadInput(f"ttl_seconds must be 1 to {MAX_TTL} (a week), got {value}")
    return value


def question_id(value: int) -> int:
    if not 1 <= value < MAX_QUESTION_ID:
        raise BadInput(f"a question id is a number from 1 to {MAX_QUESTION_ID - 1}, got {value}")
    return value


_QUESTION_DOC = f"the question, at most {MAX_QUESTION} bytes"
_OPTIONS_DOC = (
    f"up to {MAX_OPTIONS} answers to choose from (each at most {MAX_OPTION} bytes); none: free text"
)
_MULTI_DOC = "with options: more than one may be chosen"
_TTL_DOC = f"seconds until the question expires unanswered (1 to {MAX_TTL})"


@attrs.frozen(kw_only=True)
class AskOperatorRequest(Request):
    """Ask the operator; the answer arrives later as an ``operator_answered`` event from system."""

    CMD = "ask_operator"
    question: str = attrs.field(metadata=check(question_text, _QUESTION_DOC))
    options: list[str] | None = attrs.field(default=None, metadata=check(options, _OPTIONS_DOC))
    multi: bool = attrs.field(default=False, metadata=doc(_MULTI_DOC))
    ttl_seconds: int | None = attrs.field(default=None, metadata=check(ttl, _TTL_DOC))


@attrs.frozen(kw_only=True)
class AskRequest(Request):
    """Ask a peer agent (or the manager; ``operator`` asks the operator); the answer arrives later as
    an ``answered`` event from system."""

    CMD = "ask"
    to: str = attrs.field(
        metadata=check(
            lambda v: v.strip().removeprefix("@"),
            "an agent's name, 'manager' or 'operator'; name@hive: an agent or the manager of another hive",
        )
    )
    question: str = attrs.field(metadata=check(question_text, _QUESTION_DOC))
    options: list[str] | None = attrs.field(default=None, metadata=check(options, _OPTIONS_DOC))
    multi: bool = attrs.field(default=False, metadata=doc(_MULTI_DOC))
    ttl_seconds: int | None = attrs.field(default=None, metadata=check(ttl, _TTL_DOC))


@attrs.frozen(kw_only=True)
class AnswerRequest(Request):
    """Answer question ``id`` (an agent: one asked of it; the operator: any open one)."""

    CMD = "answer"
    id: int = attrs.field(metadata=check(question_id, "the question's id (from the event that asked it)"))
    answer: str = attrs.field(
        metadata=check(
            answer_text, f"the answer, at most {MAX_ANSWER} bytes (one of the options, if it had any)"
        )
    )


@attrs.frozen(kw_only=True)
class QuestionsRequest(Request):
    """The open questions, oldest first (operator and peer ones)."""

    CMD = "questions"


@attrs.frozen(kw_only=True)
class CancelQuestionRequest(Request):
    """Cancel open question ``id``: its asker is answered ``[cancelled]``."""

    CMD = "cancel_question"
    id: int = attrs.field(metadata=check(question_id))
