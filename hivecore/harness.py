"""``python -m hivecore.harness``: the minimal agent the process runtime runs by default.

It reads ``HIVE_LABEL`` and ``HIVE_STATE_DIR``, writes ``env.json`` (its ``HIVE_*`` environment) into
the state dir, then rewrites ``heartbeat`` (unix time) every ``HIVE_HEARTBEAT_SECONDS`` (default 5)
until SIGTERM or SIGINT, on which it exits 0. Later it will long-poll its agent socket.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import attrs
import trio

from hivecore.runtime.shim import write_json_atomic

log = logging.getLogger("hivecore.harness")

ENV_FILE = "env.json"
HEARTBEAT_FILE = "heartbeat"
DEFAULT_HEARTBEAT_SECONDS = 5.0


class SettingsError(Exception):
    """The environment does not describe a runnable agent."""


@attrs.frozen(kw_only=True)
class HarnessSettings:
    label: str
    state_dir: Path
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    hive_env: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HarnessSettings:
        label = env.get("HIVE_LABEL", "")
        state_dir = env.get("HIVE_STATE_DIR", "")
        if not label or not state_dir:
            raise SettingsError("HIVE_LABEL and HIVE_STATE_DIR must be set")
        raw = env.get("HIVE_HEARTBEAT_SECONDS", str(DEFAULT_HEARTBEAT_SECONDS))
        try:
            heartbeat = float(raw)
        except ValueError:
            raise SettingsError(f"HIVE_HEARTBEAT_SECONDS is not a number: {raw!r}") from None
        if not heartbeat > 0:
            raise SettingsError(f"HIVE_HEARTBEAT_SECONDS must be positive, not {raw!r}")
        hive_env = {k: v for k, v in env.items() if k.startswith("HIVE_")}
        return cls(label=label, state_dir=Path(state_dir), heartbeat_seconds=heartbeat, hive_env=hive_env)


def beat(state_dir: Path) -> None:
    """Write the current unix time to the heartbeat file (atomically)."""
    tmp = state_dir / f".{HEARTBEAT_FILE}.tmp"
    tmp.write_text(f"{time.time():.3f}\n", encoding="utf-8")
    os.replace(tmp, state_dir / HEARTBEAT_FILE)


async def run_harness(
    settings: HarnessSettings, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Write ``env.json``, then heartbeat forever; ``task_status.started()`` after the first beat.

    Runs until cancelled; the state dir is left as it is (the last heartbeat shows when it stopped).
    """
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings.state_dir / ENV_FILE, dict(settings.hive_env))
    beat(settings.state_dir)
    log.info("agent %s up; state in %s", settings.label, settings.state_dir)
    task_status.started()
    while True:
        await trio.sleep(settings.heartbeat_seconds)
        beat(settings.state_dir)


async def _main(settings: HarnessSettings) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_harness, settings)
            async for signum in signals:
                log.info("agent %s: %s, exiting", settings.label, signal.Signals(signum).name)
                nursery.cancel_scope.cancel(reason="signal")
                break


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = HarnessSettings.from_env(os.environ)
    except SettingsError as e:
        log.error("cannot start: %s", e)
        return 2
    trio.run(_main, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
