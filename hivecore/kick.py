"""The text of a kick: the message an agent gets from ``system`` after it was (re)started or rebuilt."""

from __future__ import annotations

REASON_STARTED = "container started"
REASON_RESTARTED = "container restarted"
REASON_REBUILT = "you were rebuilt"
REASON_CONFIG_APPLIED = "config update applied"


def kick_body(name: str, reason: str) -> str:
    return (
        f"{reason}\n\n"
        "You were just (re)started by the operator. If you were in the middle of a task, look in "
        f"/agents/{name}/state for your notes and carry on; claude's --continue session is intact, "
        "so your prior context is still there."
    )
