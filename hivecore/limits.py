"""Per-container resource limits: ``MemoryMax=`` and ``CPUQuota=`` values, validated.

The values end up verbatim in a systemd drop-in (``hive-resources.conf``, written by the nixos
runtime), so a malformed one would only surface as a unit that refuses to load at the next start.
They are checked here instead, when the daemon starts, against the subset of systemd's syntax
(systemd.resource-control(5)) that makes sense for an agent container:

- ``MemoryMax``: a positive size in bytes with an optional ``K``/``M``/``G``/``T`` suffix (base
  1024; ``4G``, ``1.5G``, ``512M``), a percentage of the physical memory (``50%``, at most 100) or
  ``infinity`` (no limit).
- ``CPUQuota``: a positive percentage of one CPU, at most two decimals (``200%`` = two CPUs' worth).

Pure (no trio): the command line's parser uses these as argparse ``type=`` functions.
"""

from __future__ import annotations

import argparse
import re

from hivecore.errors import HiveError

DEFAULT_AGENT_UID_BASE = 1_900_000_000
"""Start of the agents' id range (process runtime as root): above every range systemd and
login.defs hand out (system and login users, DynamicUser, homed, nspawn's container ranges end at
1879048191), below 2^31."""
AGENT_ID_COUNT = 65536
"""Ids in the range: ``base`` is the agents' shared group, ``base+1 …`` one uid (and gid) per agent."""
DEFAULT_EVAL_MEMORY_TEXT = "2G"
"""``--eval-memory-max``'s default (:data:`hivecore.nixconfine.DEFAULT_EVAL_MEMORY`)."""
DEFAULT_MEMORY_MAX = "4G"
DEFAULT_CPU_QUOTA = "200%"

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGT]?)")
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]{1,2})?)%")


class InvalidLimit(HiveError):
    """An ``--agent-memory-max`` / ``--agent-cpu-quota`` value systemd would refuse, or a senseless one."""


def validate_memory_max(value: str) -> str:
    """``value`` unchanged if it is a valid ``MemoryMax=`` for an agent, else :class:`InvalidLimit`."""
    if value == "infinity":
        return value
    if (m := _PERCENT.fullmatch(value)) is not None:
        if not 0 < float(m.group(1)) <= 100:
            raise InvalidLimit(
                f"memory limit {value!r}: a percentage of the RAM must be above 0% and at most 100%"
            )
        return value
    if (m := _SIZE.fullmatch(value)) is not None:
        if float(m.group(1)) <= 0:
            raise InvalidLimit(f"memory limit {value!r} must be above zero (use 'infinity' for no limit)")
        return value
    raise InvalidLimit(
        f"memory limit {value!r} is not a size: use bytes with an optional K, M, G or T suffix "
        "(4G, 512M), a percentage of the RAM (50%) or 'infinity'"
    )


def validate_cpu_quota(value: str) -> str:
    """``value`` unchanged if it is a valid ``CPUQuota=`` for an agent, else :class:`InvalidLimit`."""
    m = _PERCENT.fullmatch(value)
    if m is None:
        raise InvalidLimit(
            f"CPU quota {value!r} is not a percentage of one CPU: use e.g. 50% or 200% (two CPUs' worth)"
        )
    if float(m.group(1)) <= 0:
        raise InvalidLimit(f"CPU quota {value!r} must be above 0%")
    return value


def memory_max_arg(value: str) -> str:
    """argparse ``type=`` for ``--agent-memory-max``: the error message names the mistake."""
    try:
        return validate_memory_max(value)
    except InvalidLimit as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cpu_quota_arg(value: str) -> str:
    """argparse ``type=`` for ``--agent-cpu-quota``."""
    try:
        return validate_cpu_quota(value)
    except InvalidLimit as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def validate_agent_uid_base(base: int) -> int:
    """``base`` if a whole agent id range fits above the login users and below 2^31, else
    :class:`InvalidLimit`."""
    top = 2**31 - AGENT_ID_COUNT
    if isinstance(base, bool) or not isinstance(base, int) or not 1000 <= base <= top:
        raise InvalidLimit(f"--agent-uid-base must be a whole number from 1000 to {top}, not {base!r}")
    return base


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str) -> int:
    """Bytes of ``value``: a whole number with an optional ``K``/``M``/``G``/``T`` suffix (base
    1024), at least 64M; :class:`InvalidLimit` otherwise."""
    match = re.fullmatch(r"([0-9]+)([KMGT]?)", value.strip())
    if not match:
        raise InvalidLimit(f"{value!r} is not a size (bytes, or a number with K, M, G or T)")
    size = int(match.group(1)) * _UNITS[match.group(2)]
    if size < 64 << 20:
        raise InvalidLimit(f"{value!r} is below 64M: no evaluation fits")
    return size


def size_arg(value: str) -> int:
    """:func:`parse_size` as an argparse ``type=``."""
    try:
        return parse_size(value)
    except InvalidLimit as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
