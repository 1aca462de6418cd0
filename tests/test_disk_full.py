"""Issue 16 item 6: a full disk, on a real small filesystem (a tmpfs mounted with ``size=``).

sqlite ends the transaction itself when the disk is full, so the answer must be its real error
("database or disk is full"), not "cannot rollback - no transaction is active"; nothing is half
written, no temp file is left, and once there is space again everything works."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hivecore import agent_users
from hivecore import store as st
from hivecore.agent_users import NoAgentIds
from hivecore.atomic import write_text_atomic
from hivecore.errors import Refused, answer_for
from hivecore.runtime.shim import write_json_atomic
from hivecore.services.broker import Broker
from hivecore.sockets.mcp import write_no_follow
from hivecore.store import Store, StoreFull


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (root only: what CI runs as)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    got = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mnt)], check=False
    )
    if got.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(directory: Path) -> Path:
    """Fill ``directory``'s filesystem to the last byte; the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)

    def forever() -> None:
        while True:
            os.write(fd, b"\0" * 4096)

    try:
        with pytest.raises(OSError, match="No space left on device"):
            forever()
    finally:
        os.close(fd)
    return filler


class Bus:
    def publish(self, event: object) -> None:
        pass


def test_a_full_disk_inside_a_transaction_raises_sqlite_s_own_error(small_fs: Path) -> None:
    conn = st.connect(small_fs / "hive.db")
    try:
        filler = fill(small_fs)

        def until_full() -> None:
            for _ in range(1000):
                st.insert_approval(conn, "coder", "spawn", "", "x" * 3000)

        with pytest.raises(sqlite3.OperationalError, match=r"^database or disk is full$") as caught:
            until_full()
        assert st.is_full(caught.value), repr(caught.value)
        assert not conn.in_transaction
        filler.unlink()
        assert st.insert_approval(conn, "coder", "spawn").status == "pending"
    finally:
        conn.close()


async def test_a_send_on_a_full_disk_says_so_and_the_broker_recovers(small_fs: Path) -> None:
    store = Store(small_fs / "hive.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        broker = Broker(store, Bus(), lambda: ["coder"])
        await broker.send("operator", "coder", "before")
        filler = await trio.to_thread.run_sync(fill, small_fs)

        async def until_full() -> None:
            for _ in range(1000):
                await broker.send("operator", "coder", "x" * 4000)

        with pytest.raises(StoreFull) as caught:
            await until_full()
        message = answer_for(caught.value, "send").line
        assert "rollback" not in message, message
        assert message.startswith("the database cannot be written: database or disk is full ("), message
        assert not answer_for(caught.value, "send").internal
        filler.unlink()
        [after] = await broker.send("operator", "coder", "after")
        assert after > 1
        nursery.cancel_scope.cancel()


def test_set_status_on_a_full_disk_leaves_no_temp_file(small_fs: Path) -> None:
    state = small_fs / "state"
    state.mkdir()
    (state / "status").write_text("old\n")
    fill(small_fs)
    with pytest.raises(Refused, match="No space left on device"):
        write_no_follow(state, "status", "y" * 100_000)
    assert sorted(p.name for p in state.iterdir()) == ["status"]
    assert (state / "status").read_text() == "old\n"


def test_daemon_files_written_on_a_full_disk_leave_no_temp_file(small_fs: Path) -> None:
    target = small_fs / "deployed.json"
    target.write_text("old")
    fill(small_fs)
    with pytest.raises(OSError, match="No space left on device"):
        write_text_atomic(target, "z" * 100_000, mode=0o644)
    assert sorted(p.name for p in small_fs.iterdir()) == ["deployed.json", "filler"]
    assert target.read_text() == "old"


def test_the_shim_s_and_the_uid_record_s_writes_leave_no_temp_file(small_fs: Path) -> None:
    status = small_fs / "exit_status.json"
    record = small_fs / "agent-uids.json"
    fill(small_fs)
    with pytest.raises(OSError, match="No space left on device"):
        write_json_atomic(status, {"pad": "z" * 100_000})
    with pytest.raises(NoAgentIds, match="No space left on device"):
        agent_users._write(record, {f"agent{i}": 1_900_000_000 + i for i in range(5000)})
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]
