"""buy_stock against a real paper-trading ledger file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from hitl_mcp.actions.base import Execution
from hitl_mcp.actions.buy_stock import BuyArguments, BuyStock, BuyStockSettings
from hitl_mcp.errors import ActionFailed, ConfigError, InvalidArguments
from hitl_mcp.ledger import Fill, Ledger


def _remove_database(path: Path) -> None:
    for file in (path, *path.parent.glob(f"{path.name}-*")):
        file.unlink()


def make_action(tmp_path: Path, **settings: Any) -> BuyStock:
    return BuyStock(BuyStockSettings.model_validate(settings, context={"base_dir": tmp_path}))


def order_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT client_order_id, symbol, quantity FROM orders").fetchall()


@pytest.fixture
def action(tmp_path: Path) -> BuyStock:
    return make_action(tmp_path, starting_cash=100_000)


def execution(request_id: str) -> Execution:
    return Execution(request_id=request_id, preview={})


# -- settings and summary -------------------------------------------------------------------------------


def test_default_ledger_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    settings = BuyStock.configure({}, tmp_path)
    assert isinstance(settings, BuyStockSettings)
    assert settings.ledger == tmp_path / "ledger.db"
    assert settings.starting_cash == 1_000_000.0


def test_settings_refuse_negative_or_infinite_starting_cash(tmp_path: Path) -> None:
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match=r"actions\.buy_stock\.starting_cash"):
            BuyStock.configure({"starting_cash": bad}, tmp_path)


def test_summary_reads_as_one_sentence_with_thousands_separators(action: BuyStock) -> None:
    args = action.parse({"symbol": "googl", "quantity": 100, "price": 150})
    assert action.summary(args) == "Buy 100 GOOGL at $150.00 — total $15,000.00"
    big = action.parse({"symbol": "BRK.A", "quantity": 1_500, "price": 612_345.5})
    assert action.summary(big) == "Buy 1,500 BRK.A at $612,345.50 — total $918,518,250.00"


def test_summary_keeps_sub_cent_prices_visible(action: BuyStock) -> None:
    args = action.parse({"symbol": "PENNY", "quantity": 1000, "price": 0.0012})
    assert action.summary(args) == "Buy 1,000 PENNY at $0.0012 — total $1.20"


# -- argument validation --------------------------------------------------------------------------------


def test_symbol_is_normalised_to_upper_case(action: BuyStock) -> None:
    assert action.parse({"symbol": "brk-b", "quantity": 1, "price": 1.0}).symbol == "BRK-B"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", 0),
        ("quantity", -5),
        ("quantity", 2.0),
        ("quantity", 2.5),
        ("quantity", True),
        ("quantity", "10"),
        ("quantity", 1_000_000_001),
        ("price", float("inf")),
        ("price", float("-inf")),
        ("price", float("nan")),
        ("price", 0),
        ("price", -1.0),
        ("price", 2e9),
        ("price", True),
        ("symbol", ""),
        ("symbol", "A" * 13),
        ("symbol", "1ABC"),
        ("symbol", "GO OG"),
        ("symbol", "GOOG;DROP"),
    ],
)
def test_invalid_arguments_are_refused_naming_the_field(action: BuyStock, field: str, value: Any) -> None:
    raw: dict[str, Any] = {"symbol": "GOOGL", "quantity": 10, "price": 150.0, field: value}
    with pytest.raises(InvalidArguments, match=rf"^{field}: "):
        action.parse(raw)


def test_unknown_and_missing_arguments_are_refused(action: BuyStock) -> None:
    with pytest.raises(InvalidArguments, match="side: Extra inputs are not permitted"):
        action.parse({"symbol": "GOOGL", "quantity": 1, "price": 1.0, "side": "sell"})
    with pytest.raises(InvalidArguments, match="price: Field required"):
        action.parse({"symbol": "GOOGL", "quantity": 1})


def test_input_schema_documents_every_field_and_forbids_extras() -> None:
    schema = BuyArguments.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"symbol", "quantity", "price"}
    assert all(prop.get("description") for prop in schema["properties"].values())


# -- preview --------------------------------------------------------------------------------------------


async def test_preview_does_not_create_the_ledger_file(tmp_path: Path, action: BuyStock) -> None:
    args = action.parse({"symbol": "GOOGL", "quantity": 100, "price": 150.0})
    preview = await action.preview(args)
    assert preview == {
        "total": 15_000.0,
        "cash_before": 100_000.0,
        "cash_after": 85_000.0,
        "position_before": 0,
        "position_after": 100,
        "sufficient_cash": True,
    }
    assert [entry async for entry in anyio.Path(tmp_path).iterdir()] == []


async def test_preview_reflects_earlier_fills_and_flags_a_shortfall(tmp_path: Path, action: BuyStock) -> None:
    await action.execute(action.parse({"symbol": "GOOGL", "quantity": 100, "price": 150.0}), execution("r1"))
    preview = await action.preview(action.parse({"symbol": "GOOGL", "quantity": 1000, "price": 150.0}))
    assert preview["cash_before"] == 85_000.0
    assert preview["position_before"] == 100
    assert preview["sufficient_cash"] is False
    assert preview["cash_after"] == -65_000.0
    assert json.loads(json.dumps(preview)) == preview


async def test_previews_follow_other_writers_and_a_replaced_file(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.db"
    mine, theirs = Ledger(ledger_path, 1000.0), Ledger(ledger_path, 1000.0)
    await mine.buy("r1", "GOOGL", 1, 100.0)
    assert await mine.snapshot("GOOGL") == (900.0, 1)  # read, then kept open for the next reads
    # Another writer's order (as another process's would be) shows in the very next preview.
    await theirs.buy("r2", "GOOGL", 2, 100.0)
    assert await mine.snapshot("GOOGL") == (700.0, 3)
    # The file replaced underneath by a fresh ledger: previews read the new one.
    _remove_database(ledger_path)
    await Ledger(ledger_path, 50.0).buy("r3", "MSFT", 1, 10.0)
    assert await mine.snapshot("GOOGL") == (40.0, 0)


# -- execute --------------------------------------------------------------------------------------------


async def test_buy_debits_cash_and_adds_to_the_position(tmp_path: Path, action: BuyStock) -> None:
    result = await action.execute(
        action.parse({"symbol": "googl", "quantity": 100, "price": 150.25}), execution("req-1")
    )
    assert result["order_id"] == "req-1"
    assert result["symbol"] == "GOOGL"
    assert result["quantity"] == 100
    assert result["price"] == 150.25
    assert result["total"] == 15_025.0
    assert result["cash_after"] == 84_975.0
    assert result["position_after"] == 100
    assert json.loads(json.dumps(result)) == result

    second = await action.execute(
        action.parse({"symbol": "GOOGL", "quantity": 50, "price": 100.0}), execution("req-2")
    )
    assert second["cash_after"] == 79_975.0
    assert second["position_after"] == 150

    # A fresh Ledger on the same file sees what was written: it is on disk, not in memory.
    ledger = Ledger(tmp_path / "ledger.db", starting_cash=0)
    assert await ledger.cash() == 79_975.0
    assert await ledger.position("GOOGL") == 150
    assert [order.order_id for order in await ledger.orders()] == ["req-1", "req-2"]


async def test_cents_do_not_drift_over_many_small_orders(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db", starting_cash=1.0)
    for index in range(10):
        await ledger.buy(f"r{index}", "DIME", 1, 0.1)
    assert await ledger.cash() == 0.0
    assert await ledger.position("DIME") == 10


async def test_same_request_id_twice_buys_once(tmp_path: Path, action: BuyStock) -> None:
    args = action.parse({"symbol": "GOOGL", "quantity": 100, "price": 150.0})
    first = await action.execute(args, execution("req-1"))
    again = await action.execute(args, execution("req-1"))
    assert again == first
    assert await action.ledger.cash() == 85_000.0
    assert await action.ledger.position("GOOGL") == 100
    assert order_rows(tmp_path / "ledger.db") == [("req-1", "GOOGL", 100)]


async def test_reusing_a_request_id_for_a_different_order_is_refused(action: BuyStock) -> None:
    await action.execute(action.parse({"symbol": "GOOGL", "quantity": 100, "price": 150.0}), execution("r"))
    with pytest.raises(ActionFailed, match="already used for a different order"):
        await action.execute(action.parse({"symbol": "AAPL", "quantity": 1, "price": 1.0}), execution("r"))
    assert await action.ledger.cash() == 85_000.0


async def test_insufficient_cash_fails_cleanly_and_writes_nothing(tmp_path: Path, action: BuyStock) -> None:
    await action.execute(action.parse({"symbol": "AAPL", "quantity": 10, "price": 100.0}), execution("ok"))
    orders_before = order_rows(tmp_path / "ledger.db")

    args = action.parse({"symbol": "GOOGL", "quantity": 1000, "price": 150.0})
    with pytest.raises(ActionFailed) as refused:
        await action.execute(args, execution("too-big"))
    assert str(refused.value) == (
        "insufficient cash: the order costs $150,000.00 but the account holds $99,000.00"
    )
    assert await action.ledger.cash() == 99_000.0
    assert await action.ledger.position("GOOGL") == 0
    assert order_rows(tmp_path / "ledger.db") == orders_before


async def test_insufficient_cash_on_a_fresh_ledger_leaves_the_starting_balance(tmp_path: Path) -> None:
    action = make_action(tmp_path, starting_cash=10)
    with pytest.raises(ActionFailed, match="insufficient cash"):
        await action.execute(action.parse({"symbol": "X", "quantity": 1, "price": 10.01}), execution("r"))
    assert await action.ledger.cash() == 10.0
    assert await action.ledger.orders() == []


async def test_an_existing_ledger_keeps_its_balance_whatever_starting_cash_says(tmp_path: Path) -> None:
    await Ledger(tmp_path / "ledger.db", starting_cash=500).buy("r1", "X", 1, 100.0)
    reopened = Ledger(tmp_path / "ledger.db", starting_cash=1_000_000)
    assert await reopened.cash() == 400.0


# -- concurrency ----------------------------------------------------------------------------------------


def test_threads_racing_on_one_client_order_id_produce_one_order(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    racers = 8
    start = threading.Barrier(racers)
    fills: list[Fill] = []
    errors: list[BaseException] = []

    def buy() -> None:
        ledger = Ledger(path, starting_cash=1_000_000)

        async def run() -> Fill:
            return await ledger.buy("same-id", "GOOGL", 100, 150.0)

        try:
            start.wait()
            fills.append(anyio.run(run))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=buy) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(fills) == racers
    assert len(set(fills)) == 1
    assert order_rows(path) == [("same-id", "GOOGL", 100)]
    assert anyio.run(Ledger(path, 0).cash) == 985_000.0


_BUY_SCRIPT = """
import json, sys, anyio
from pathlib import Path
from hitl_mcp.ledger import Ledger

path, order_id = Path(sys.argv[1]), sys.argv[2]
sys.stdin.readline()  # the parent releases every process at once
fill = anyio.run(Ledger(path, 1_000_000).buy, order_id, "GOOGL", 100, 150.0)
print(json.dumps(fill.to_dict()))
"""


def run_racing_processes(path: Path, order_ids: list[str]) -> list[dict[str, Any]]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _BUY_SCRIPT, str(path), order_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for order_id in order_ids
    ]
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    return results


def test_processes_racing_on_one_client_order_id_produce_one_order(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    results = run_racing_processes(path, ["same-id"] * 6)
    assert all(result == results[0] for result in results)
    assert order_rows(path) == [("same-id", "GOOGL", 100)]
    assert anyio.run(Ledger(path, 0).cash) == 985_000.0


def test_processes_buying_distinct_orders_lose_no_debit(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    run_racing_processes(path, [f"order-{index}" for index in range(6)])
    assert len(order_rows(path)) == 6
    assert anyio.run(Ledger(path, 0).cash) == 1_000_000 - 6 * 15_000
    assert anyio.run(Ledger(path, 0).position, "GOOGL") == 600


def test_a_price_below_a_hundredth_of_a_cent_is_refused_naming_the_field() -> None:
    action = BuyStock(BuyStockSettings())

    with pytest.raises(InvalidArguments, match="price"):
        action.parse({"symbol": "GOOGL", "quantity": 1, "price": 5e-324})
    assert action.parse({"symbol": "GOOGL", "quantity": 1, "price": 0.0001}).price == 0.0001
