"""Container runtimes: one protocol, two implementations (process, nixos)."""

from hivecore.runtime.base import AgentRuntimeState, AgentSpec, ContainerRuntime, container_name

__all__ = ["AgentRuntimeState", "AgentSpec", "ContainerRuntime", "container_name"]
