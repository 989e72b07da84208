"""pricepipe.eventloop: the asyncio processes' loop is uvloop's when installed."""

from __future__ import annotations

import asyncio
import sys

import pytest

from pricepipe import eventloop


async def _loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_runs_on_uvloop_when_it_is_installed() -> None:
    pytest.importorskip("uvloop")
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_runs_on_asyncios_loop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert eventloop.loop_factory() is None
    assert eventloop.run(_loop_module()).startswith("asyncio")


def test_a_failure_and_a_cancel_come_out_as_with_asyncio_run() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        eventloop.run(fails())

    async def cancelled() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_soon(task.cancel)
        await asyncio.sleep(10)

    with pytest.raises(asyncio.CancelledError):
        eventloop.run(cancelled())
