"""``hivecore.agentlog.read``: the tail, and the lines written after an offset (``hivectl logs -f``),
on a real file an agent could have written anything into."""

from __future__ import annotations

from pathlib import Path

from hivecore import agentlog


def _log(root: Path, data: bytes) -> Path:
    path = root / "a" / "agent.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_the_tail_then_only_complete_new_lines(tmp_path: Path) -> None:
    log = _log(tmp_path, b"one\ntwo\nthree\n")
    lines, end = agentlog.read(tmp_path, "a", 2)
    assert (lines, end) == (["two", "three"], len(b"one\ntwo\nthree\n"))
    assert agentlog.read(tmp_path, "a", 50, end) == ([], end)
    with log.open("ab") as f:
        f.write(b"four\nfi")  # "fi" is a line still being written
    lines, after = agentlog.read(tmp_path, "a", 50, end)
    assert (lines, after) == (["four"], end + len(b"four\n"))
    with log.open("ab") as f:
        f.write(b"ve\n")
    assert agentlog.read(tmp_path, "a", 50, after) == (["five"], after + len(b"five\n"))


def test_a_burst_longer_than_one_answer_is_read_in_pieces_without_a_gap(tmp_path: Path) -> None:
    _log(tmp_path, b"".join(b"line %d\n" % i for i in range(1200)))
    got: list[str] = []
    offset = 0
    for _ in range(4):
        lines, offset = agentlog.read(tmp_path, "a", 500, offset)
        got += lines
    assert got == [f"line {i}" for i in range(1200)]


def test_a_truncated_log_is_read_from_its_start(tmp_path: Path) -> None:
    _log(tmp_path, b"x" * 100 + b"\n")
    _, end = agentlog.read(tmp_path, "a", 50)
    _log(tmp_path, b"rotated\n")  # smaller than the offset the reader holds
    assert agentlog.read(tmp_path, "a", 50, end) == (["rotated"], len(b"rotated\n"))


def test_a_line_without_end_is_cut_not_waited_for_forever(tmp_path: Path) -> None:
    size = agentlog.TAIL_BYTES + 10
    _log(tmp_path, b"y" * size)  # no newline at all: an agent flooding one line
    lines, end = agentlog.read(tmp_path, "a", 50, 0)
    assert end == agentlog.TAIL_BYTES  # one full window consumed, the rest comes next time
    assert lines == ["y" * agentlog.MAX_LINE]


def test_no_log_yet(tmp_path: Path) -> None:
    assert agentlog.read(tmp_path, "a", 50) == ([], 0)
    (tmp_path / "a").mkdir()
    assert agentlog.read(tmp_path, "a", 50, 7) == ([], 0)
