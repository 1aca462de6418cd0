"""The text of a kick: the message an agent gets from ``system`` after it was (re)started or rebuilt."""

from __future__ import annotations

from hivecore.config import StatePaths
from hivecore.names import validate_name

REASON_STARTED = "container started"
REASON_RESTARTED = "container restarted"
REASON_REBUILT = "you were rebuilt"
REASON_CONFIG_APPLIED = "config update applied"

NIXOS_STATE_DIR = "/agents/{name}/state"
"""An agent's state dir as its nixos container sees it (bound there by :mod:`hivecore.runtime.nixos`)."""


def agent_state_dir(runtime: str, paths: StatePaths, name: str) -> str:
    """The path of ``name``'s state dir *as the agent sees it*: under the process runtime the host
    path (``<state>/agents/<n>/state``, its ``HIVE_STATE_DIR``), in a nixos container
    ``/agents/<n>/state``."""
    if runtime == "nixos":
        return NIXOS_STATE_DIR.format(name=validate_name(name))
    return str(paths.agent_state(name))


def kick_body(name: str, reason: str, state_dir: str) -> str:
    """The kick for ``name``; ``state_dir`` is its state dir as it sees it (:func:`agent_state_dir`)."""
    return (
        f"{reason}\n\n"
        "You were just (re)started by the operator. If you were in the middle of a task, look in "
        f"{state_dir} for your notes and carry on; claude's --continue session is intact, "
        "so your prior context is still there."
    )
