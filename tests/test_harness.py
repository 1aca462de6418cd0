"""The minimal harness: in-process with the autojump clock, and as a real ``python -m hivecore.harness``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from hivecore import harness
from hivecore.harness import HarnessSettings, SettingsError, run_harness
from hivecore.runtime.process import PACKAGE_ROOT
from tests.waiting import eventually


def test_settings_from_env(tmp_path: Path) -> None:
    env = {"HIVE_LABEL": "alpha", "HIVE_STATE_DIR": str(tmp_path), "HIVE_PORT": "8123", "HOME": "/root"}
    s = HarnessSettings.from_env(env)
    assert s.label == "alpha"
    assert s.state_dir == tmp_path
    assert s.heartbeat_seconds == 5.0
    assert dict(s.hive_env) == {"HIVE_LABEL": "alpha", "HIVE_STATE_DIR": str(tmp_path), "HIVE_PORT": "8123"}
    assert HarnessSettings.from_env({**env, "HIVE_HEARTBEAT_SECONDS": "0.5"}).heartbeat_seconds == 0.5


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"HIVE_LABEL": "alpha"},
        {"HIVE_LABEL": "alpha", "HIVE_STATE_DIR": "/x", "HIVE_HEARTBEAT_SECONDS": "soon"},
        {"HIVE_LABEL": "alpha", "HIVE_STATE_DIR": "/x", "HIVE_HEARTBEAT_SECONDS": "0"},
    ],
)
def test_settings_errors(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        HarnessSettings.from_env(env)


async def test_heartbeats_on_schedule(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    beats: list[float] = []
    real_beat = harness.beat

    def counting_beat(state_dir: Path) -> None:
        beats.append(trio.current_time())
        real_beat(state_dir)

    monkeypatch.setattr(harness, "beat", counting_beat)
    state = tmp_path / "agents" / "alpha" / "state"
    settings = HarnessSettings(
        label="alpha", state_dir=state, heartbeat_seconds=2.0, hive_env={"HIVE_LABEL": "alpha"}
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(run_harness, settings)
        assert json.loads((state / "env.json").read_text()) == {"HIVE_LABEL": "alpha"}
        assert float((state / "heartbeat").read_text()) > 0
        start = trio.current_time()
        await trio.sleep(7.0)
        nursery.cancel_scope.cancel()
    assert [round(t - start, 6) for t in beats] == [0.0, 2.0, 4.0, 6.0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_real_process_exits_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    state = tmp_path / "state"
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": str(PACKAGE_ROOT),
        "HIVE_LABEL": "alpha",
        "HIVE_STATE_DIR": str(state),
        "HIVE_HEARTBEAT_SECONDS": "0.05",
        "HIVE_PORT": "8123",
    }
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "hivecore.harness"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        with trio.fail_after(10):
            await eventually((state / "heartbeat").exists)
            first = (state / "heartbeat").read_text()
            await eventually(lambda: (state / "heartbeat").read_text() != first)  # it keeps beating
            proc.send_signal(sig)
            assert await proc.wait() == 0
        assert proc.stderr is not None
        err = b""
        while chunk := await proc.stderr.receive_some(65536):
            err += chunk
        assert sig.name.encode() in err
        assert json.loads((state / "env.json").read_text())["HIVE_PORT"] == "8123"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.stderr is not None:
            await proc.stderr.aclose()


async def test_real_process_refuses_without_env(tmp_path: Path) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "hivecore.harness"],
        env={"PYTHONPATH": str(PACKAGE_ROOT)},
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 2
    assert b"HIVE_LABEL and HIVE_STATE_DIR must be set" in result.stderr


# --- the operator's environment from HIVE_AGENT_ENV_FILE (issue 17, item 5: the nixos runtime) ---------


def test_agent_env_file_is_loaded_over_the_environment(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("ANTHROPIC_BASE_URL=http://127.0.0.1:9/\nSHARED=operator\n")
    env_file.chmod(0o600)
    base = {"HIVE_LABEL": "a", "HIVE_AGENT_ENV_FILE": str(env_file), "SHARED": "agent.nix", "KEEP": "1"}
    env = harness.with_agent_env_file(base)
    assert env == {**base, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/", "SHARED": "operator"}
    # unset, or set but absent (not bound): the environment as it is
    assert harness.with_agent_env_file({"KEEP": "1"}) == {"KEEP": "1"}
    assert harness.with_agent_env_file({**base, "HIVE_AGENT_ENV_FILE": str(tmp_path / "none")})["SHARED"] == (
        "agent.nix"
    )


def test_agent_env_file_that_is_not_a_private_regular_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("KEY=sk-secret-value\n")
    real.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(real)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    a_dir = tmp_path / "dir"
    a_dir.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.write_text("KEY=sk-secret-value\n")
    shared.chmod(0o644)
    reserved = tmp_path / "reserved"
    reserved.write_text("HIVE_SOCKET=/tmp/x\n")
    reserved.chmod(0o600)
    for path, why in (
        (link, "symlink"),
        (fifo, "not a regular file"),
        (a_dir, "not a regular file"),
        (shared, "chmod 600"),
        (reserved, "set by hive-c0re itself"),
    ):
        with pytest.raises(SettingsError, match=why) as caught:
            harness.with_agent_env_file({"HIVE_AGENT_ENV_FILE": str(path)})
        assert "sk-secret-value" not in str(caught.value)
