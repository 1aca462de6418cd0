"""Container runtimes: one protocol, two implementations (process, nixos).

Nothing is imported eagerly: the process runtime's shim (``python -m hivecore.runtime.shim``,
standard library only) is on the path of every agent start and must not pay ~100 ms for attrs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hivecore.runtime.base import AgentRuntimeState, AgentSpec, ContainerRuntime, container_name

__all__ = ["AgentRuntimeState", "AgentSpec", "ContainerRuntime", "container_name"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hivecore.runtime import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
