"""Agent web-UI ports: the manager on 8000, sub-agents hashed into 8100-8999 (reference §1.2).

The dashboard computes the same port without asking, so this is a pure function of the name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hivecore.names import MANAGER_NAME

MANAGER_PORT = 8000
WEB_PORT_BASE = 8100
WEB_PORT_RANGE = 900

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


def fnv1a_32(text: str) -> int:
    """32-bit FNV-1a over the UTF-8 bytes of ``text``."""
    h = _FNV32_OFFSET
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * _FNV32_PRIME) & 0xFFFFFFFF
    return h


def agent_port(name: str) -> int:
    """The web-UI port of agent ``name``: 8000 for the manager, else ``8100 + fnv1a_32(name) % 900``."""
    if name == MANAGER_NAME:
        return MANAGER_PORT
    return WEB_PORT_BASE + fnv1a_32(name) % WEB_PORT_RANGE


def port_conflicts(names: Iterable[str]) -> list[dict[str, Any]]:
    """``[{port, agents}]`` for every web-UI port (:func:`agent_port`) two or more of ``names``
    share, by port; agents sorted. The original's policy: rename one agent (no probing)."""
    by_port: dict[int, list[str]] = {}
    for name in names:
        by_port.setdefault(agent_port(name), []).append(name)
    return [{"port": p, "agents": sorted(a)} for p, a in sorted(by_port.items()) if len(a) > 1]
