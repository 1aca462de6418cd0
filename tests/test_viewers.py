"""Issue 18 item 6: the read-only viewers of an agent's applied ``agent.nix`` and its state files,
over host.sock, hivectl's renderers and the dashboard's GET routes, each bad input with one clear
answer (unknown agent, a path leaving the state dir by ``..``, an absolute path or a symlink, a
symlinked directory on the way, a FIFO, a device, a file over the 1 MiB cap)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio

from hivecore.cli.hivectl import render_agent_config, render_state_file
from hivecore.daemon import Daemon
from hivecore.viewers import MAX_STATE_FILE
from tests.conftest import AUTH
from tests.test_host_socket import ask
from tests.web_client import http


async def host(hive: Daemon, **request: Any) -> dict[str, Any]:
    return await ask(hive.config.host_socket_path, request)


async def get(hive: Daemon, path: str, headers: str = AUTH) -> tuple[int, dict[str, Any]]:
    status, _, body = await http(hive, "GET", path, headers=headers)
    return status, json.loads(body)


def state_dir(hive: Daemon, name: str) -> Path:
    return hive.config.paths.agent_state(name)


async def test_the_applied_agent_nix_is_shown_and_only_for_a_live_agent(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    answer = await host(hive, cmd="agent_config", name="coder")
    assert answer["ok"] is True, answer
    config = answer["agent_config"]
    assert config["name"] == "coder"
    assert len(config["sha"]) == 40
    assert config["deployed_sha"] == config["sha"]
    assert "hive.agent" in config["agent_nix"]
    assert config["truncated"] is False

    status, body = await get(hive, "/api/agent-config/coder")
    assert status == 200
    assert body["agent_nix"] == config["agent_nix"]

    # an unknown agent, an invalid name: one clear answer each, on both surfaces
    answer = await host(hive, cmd="agent_config", name="ghost")
    assert answer["error"] == 'agent "ghost" is not managed by this hive'
    status, body = await get(hive, "/api/agent-config/ghost")
    assert (status, body["error"]) == (404, 'agent "ghost" is not managed by this hive')
    answer = await host(hive, cmd="agent_config", name="../coder")
    assert answer["ok"] is False
    assert "name" in answer["error"]
    # behind the dashboard's auth
    status, body = await get(hive, "/api/agent-config/coder", headers="")
    assert status == 401


def test_hivectl_escapes_the_agents_text() -> None:
    hostile = "{ ... }: {\x1b]52;c;ZXZpbA==\x07 }\n"
    shown = render_agent_config(
        {"agent_config": {"name": "coder", "sha": "a" * 40, "deployed_sha": "b" * 40, "agent_nix": hostile}}
    )
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert "needs an update" in shown
    shown = render_state_file({"state_file": {"path": "x", "size": 3, "text": "\x1b[2Jhi", "binary": False}})
    assert "\x1b" not in shown


async def test_a_state_file_is_read_and_every_escape_is_refused(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    root = state_dir(hive, "coder")
    (root / "notes.md").write_text("<script>alert(1)</script> notes\n")
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "sub" / "deep" / "x.txt").write_bytes(b"bin\0ary\xff")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "etc").symlink_to("/etc")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    (root / "big").write_bytes(b"x" * (MAX_STATE_FILE + 1))
    (root / "just-fits").write_bytes(b"y" * MAX_STATE_FILE)
    outside = hive.config.paths.root / "operator-token"  # a daemon file the agent could hard-link
    os.link(outside, root / "token")

    answer = await host(hive, cmd="state_file", name="coder", path="notes.md")
    assert answer["ok"] is True, answer
    found = answer["state_file"]
    assert (found["agent"], found["path"], found["binary"]) == ("coder", "notes.md", False)
    assert found["text"] == "<script>alert(1)</script> notes\n"  # data; the page shows it as text
    # the same file by its absolute path, as the host and as a container see it
    for path in (str(root / "notes.md"), "/agents/coder/state/notes.md"):
        again = await host(hive, cmd="state_file", name="coder", path=path)
        assert again["state_file"]["path"] == "notes.md", again
    nested = (await host(hive, cmd="state_file", name="coder", path="sub/deep/x.txt"))["state_file"]
    assert nested["binary"] is True
    assert nested["size"] == 8
    fits = (await host(hive, cmd="state_file", name="coder", path="just-fits"))["state_file"]
    assert fits["size"] == MAX_STATE_FILE

    refusals = {
        "../config/agent.nix": "has an empty, '.' or '..' component",
        "sub/../../claude/x": "has an empty, '.' or '..' component",
        "/etc/passwd": "is not inside the state dir of coder",
        "": "path is empty",
        "passwd": "it is a symbolic link; the viewer follows no links",
        "etc/passwd": "is a symbolic link or not a directory; the viewer follows no links",
        "notes.md/x": "is a symbolic link or not a directory",
        "fifo": "it is not a regular file (a directory, FIFO, socket or device)",
        "null": "it is not a regular file",
        "sub": "it is not a regular file",
        "big": "it is larger than 1024 KiB, the viewer's limit",
        "token": "it is a hard link to a file coder does not own",
        "missing.txt": "no file 'missing.txt' in the state dir of coder",
    }
    for path, words in refusals.items():
        with trio.fail_after(10):  # a FIFO must never block the daemon
            answer = await host(hive, cmd="state_file", name="coder", path=path)
        assert answer["ok"] is False, (path, answer)
        assert words in answer["error"], (path, answer["error"])

    # the state dir itself swapped for a link to another agent's (or the host's) directory
    await hive.coordinator.spawn("peer")
    (state_dir(hive, "peer") / "secret").write_text("peer's\n")
    moved = root.with_name("state.real")
    root.rename(moved)
    root.symlink_to(state_dir(hive, "peer"))
    try:
        answer = await host(hive, cmd="state_file", name="coder", path="secret")
        assert "symbolic link or not a directory" in answer["error"], answer
    finally:
        root.unlink()
        moved.rename(root)

    answer = await host(hive, cmd="state_file", name="ghost", path="notes.md")
    assert answer["error"] == 'agent "ghost" is not managed by this hive'


async def test_the_dashboard_route_answers_each_case_with_its_status(hive: Daemon) -> None:
    await hive.coordinator.spawn("coder")
    root = state_dir(hive, "coder")
    (root / "notes.md").write_text("hello\n")
    (root / "passwd").symlink_to("/etc/passwd")

    status, body = await get(hive, "/api/state-file?agent=coder&path=notes.md")
    assert (status, body["ok"], body["text"]) == (200, True, "hello\n")
    cases = {
        "agent=ghost&path=notes.md": 404,
        "agent=coder&path=missing": 404,
        f"agent=coder&path={quote('../config/agent.nix')}": 400,
        "agent=coder&path=passwd": 409,
        "agent=coder": 400,
        f"agent={quote('../x')}&path=notes.md": 400,
    }
    for query, want in cases.items():
        status, body = await get(hive, f"/api/state-file?{query}")
        assert (status, body["ok"]) == (want, False), (query, body)
        assert body["error"], query
    status, _ = await get(hive, "/api/state-file?agent=coder&path=notes.md", headers="")
    assert status == 401


@pytest.mark.parametrize("path", ["a/" * 40 + "x", "x" * 5000, "a\0b"])
async def test_odd_paths_are_refused_before_any_file_is_opened(tmp_path: Path, path: str) -> None:
    from hivecore.errors import BadInput
    from hivecore.viewers import state_path_parts

    with pytest.raises(BadInput):
        state_path_parts("coder", path, tmp_path)


async def test_hivectl_config_and_state_file_against_the_daemon(hive: Daemon) -> None:
    from tests.test_hivectl import err, hivectl, out

    sock = hive.config.host_socket_path
    await hive.coordinator.spawn("a")
    (state_dir(hive, "a") / "notes.md").write_text("evil \x1b]0;owned\x07 title\n")
    result = await hivectl("config", "a", sock=sock)
    assert result.returncode == 0, err(result)
    assert out(result).startswith("# agent.nix of a at applied main ")
    assert "hive.agent" in out(result)
    result = await hivectl("state-file", "a", "notes.md", sock=sock)
    assert (result.returncode, out(result)) == (0, "evil \\x1b]0;owned\\x07 title\n")
    result = await hivectl("state-file", "a", "../config/agent.nix", sock=sock)
    assert result.returncode == 1
    assert "'..' component" in err(result)
    result = await hivectl("config", "ghost", sock=sock)
    assert (result.returncode, err(result)) == (1, 'hivectl: agent "ghost" is not managed by this hive\n')
