"""TransientGuard clears on every exit path, including cancellation at any checkpoint."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.event_bus import EventBus
from actors.transients import TransientRegistry
from hivecore.errors import Busy


def kinds_of(bus: EventBus, after: int = 0) -> list[tuple[str, str]]:
    with bus.subscribe(after_seq=after) as sub:
        bus.close()
        return [(e.KIND, getattr(e, "name", "")) for e in sub._backlog]


@pytest.fixture
def reg() -> TransientRegistry:
    return TransientRegistry(EventBus())


async def test_normal_exit_sets_then_clears(reg: TransientRegistry) -> None:
    async with reg.transient("a", "starting"):
        assert reg.get("a") is not None
        assert reg.get("a").kind == "starting"  # type: ignore[union-attr]
    assert reg.get("a") is None
    assert kinds_of(reg._bus) == [("transient_set", "a"), ("transient_cleared", "a")]


async def test_exception_clears(reg: TransientRegistry) -> None:
    with pytest.raises(RuntimeError):
        async with reg.transient("a", "rebuilding"):
            raise RuntimeError("boom")
    assert reg.get("a") is None


async def test_early_return_clears(reg: TransientRegistry) -> None:
    async def op() -> str:
        async with reg.transient("a", "stopping"):
            return "early"
        raise AssertionError("unreachable")

    assert await op() == "early"
    assert reg.get("a") is None


async def test_second_transient_on_same_name_is_refused(reg: TransientRegistry) -> None:
    async with reg.transient("a", "starting"):
        with pytest.raises(Busy, match='agent "a" is already starting'):
            async with reg.transient("a", "stopping"):
                pass
        assert reg.get("a").kind == "starting"  # type: ignore[union-attr]
    assert reg.get("a") is None


async def test_set_and_clear_never_checkpoint(reg: TransientRegistry) -> None:
    with trio.testing.assert_no_checkpoints():
        reg.set_nowait("a", "starting")
        reg.clear_nowait("a")


@pytest.mark.parametrize("cancel_at", range(5))
async def test_outer_cancellation_at_every_checkpoint_clears(reg: TransientRegistry, cancel_at: int) -> None:
    """The guarded block has 5 checkpoints; an outer scope is cancelled so that it lands on each."""
    reached: list[int] = []
    with trio.CancelScope() as outer:

        async def guarded() -> None:
            async with reg.transient("a", "restarting"):
                for i in range(5):
                    if i == cancel_at:
                        outer.cancel(reason="operator went away")
                    await trio.lowlevel.checkpoint()
                    reached.append(i)

        await guarded()
    assert outer.cancelled_caught
    assert reached == list(range(cancel_at))
    assert reg.get("a") is None
    assert reg.snapshot() == {}
    events = kinds_of(reg._bus)
    assert events == [("transient_set", "a"), ("transient_cleared", "a")]


async def test_cancellation_from_another_task_clears(reg: TransientRegistry) -> None:
    async with trio.open_nursery() as nursery:

        async def guarded() -> None:
            async with reg.transient("a", "rebuilding"):
                await trio.sleep_forever()

        nursery.start_soon(guarded)
        await trio.testing.wait_all_tasks_blocked()
        assert reg.get("a") is not None
        nursery.cancel_scope.cancel()
    assert reg.get("a") is None
