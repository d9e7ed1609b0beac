"""A call approved at filing (a grant, `approval = "none"`) answers with its outcome even when another
server's runner, woken by the insert, claims and runs it first: two gates on one store, the other gate
made to win the claim and to be still running the action when the filing call looks."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from hitl_mcp.config import Settings
from hitl_mcp.gate import Outcome, open_gate
from hitl_mcp.models import Request, Status
from tests.test_grants import buy, governed, orders

__all__ = ["governed"]


async def test_a_call_run_at_once_by_another_server_answers_with_its_outcome(
    governed: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_gate(governed) as caller, open_gate(governed) as other, anyio.create_task_group() as tg:
        other_claimed, caller_looked = anyio.Event(), anyio.Event()
        run, claim, get = other._run, caller.store.claim, caller.get

        async def run_after_the_caller_looked(claimed: Request) -> Outcome:
            other_claimed.set()
            await caller_looked.wait()
            return await run(claimed)

        async def claimed_first_by_the_other(request_id: str, *args: Any) -> Request | None:
            tg.start_soon(other.execute, request_id)
            await other_claimed.wait()
            return await claim(request_id, *args)

        async def looked(ref: str) -> Request:
            seen = await get(ref)
            caller_looked.set()
            return seen

        monkeypatch.setattr(other, "_run", run_after_the_caller_looked)
        monkeypatch.setattr(caller.store, "claim", claimed_first_by_the_other)
        monkeypatch.setattr(caller, "get", looked)

        with anyio.fail_after(60):
            filed = await caller.file_call("buy_stock", buy(2), "agent")  # under 1000: approval = "none"

    assert filed.request.status is Status.EXECUTED, filed.request
    assert filed.request.result is not None
    assert orders(governed) == 1
