"""`buy_stock`: a market order against the paper-trading ledger, keyed by the request id."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hitl_mcp.actions.base import Action, ActionSettings, ConfigPath, Execution
from hitl_mcp.ledger import Ledger, cents_to_dollars, format_dollars, order_total_cents

SYMBOL_PATTERN = r"^[A-Za-z][A-Za-z0-9.\-]*$"
MAX_QUANTITY = 1_000_000_000
MIN_PRICE = 0.0001
MAX_PRICE = 1e9
# Cash is kept in integer cents in SQLite, whose integers stop at 2**63: a quadrillion dollars leaves room.
MAX_STARTING_CASH = 1e15


class BuyArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: str = Field(
        min_length=1,
        max_length=12,
        pattern=SYMBOL_PATTERN,
        description="Ticker symbol, e.g. GOOGL or BRK.B: 1-12 letters, digits, '.' or '-', starting with a "
        "letter. Case does not matter.",
    )
    quantity: int = Field(
        strict=True,
        gt=0,
        le=MAX_QUANTITY,
        description=f"Number of whole shares to buy: an integer from 1 to {MAX_QUANTITY:,}.",
    )
    price: float = Field(
        strict=True,
        # A hundredth of a cent: below it a price is noise that no summary could show a person honestly.
        ge=MIN_PRICE,
        le=MAX_PRICE,
        allow_inf_nan=False,
        description=f"Price per share in US dollars (at least {MIN_PRICE}); the order fills at exactly this "
        "price.",
    )

    @field_validator("symbol")
    @classmethod
    def _upper_case(cls, value: str) -> str:
        return value.upper()


class BuyStockSettings(ActionSettings):
    ledger: ConfigPath = Field(
        default=Path("ledger.db"),
        validate_default=True,
        description="The paper-trading ledger's SQLite file; relative to the config file's folder.",
    )
    starting_cash: float = Field(
        default=1_000_000.0,
        ge=0,
        le=MAX_STARTING_CASH,
        allow_inf_nan=False,
        description="Cash in US dollars a new ledger starts with. An existing ledger keeps its own balance.",
    )


def _format_price(price: float) -> str:
    """Cents normally; sub-cent prices keep their digits so "$0.00" never hides a real price."""
    exact = Decimal(repr(price))
    if exact == exact.quantize(Decimal("0.01")):
        return f"${exact:,.2f}"
    return f"${exact:,f}"


class BuyStock(Action[BuyArguments, BuyStockSettings]):
    name = "buy_stock"
    description = (
        "Request to buy shares of a stock (paper trading). This does NOT buy anything by itself: it files a "
        "request that a human must approve, and returns at once with a request id. Only after approval is "
        "the order placed, exactly once, at the given price, if the account has the cash. Use the request id "
        "to check the outcome later. Arguments: symbol (ticker), quantity (whole shares), price (US dollars "
        "per share)."
    )
    arguments_model = BuyArguments
    settings_model = BuyStockSettings
    preview_types: ClassVar[Mapping[str, type]] = {
        "total": float,
        "cash_before": float,
        "cash_after": float,
        "position_before": int,
        "position_after": int,
        "sufficient_cash": bool,
    }

    def __init__(self, settings: BuyStockSettings) -> None:
        super().__init__(settings)
        self.ledger = Ledger(settings.ledger, settings.starting_cash)

    def target(self) -> dict[str, str]:
        return {"ledger": str(self.settings.ledger.resolve())}

    def summary(self, args: BuyArguments) -> str:
        total = format_dollars(order_total_cents(args.quantity, args.price))
        return f"Buy {args.quantity:,} {args.symbol} at {_format_price(args.price)} — total {total}"

    async def preview(self, args: BuyArguments) -> dict[str, Any]:
        cash_cents, position = await self.ledger.snapshot_cents(args.symbol)
        total_cents = order_total_cents(args.quantity, args.price)
        # Plain arithmetic even when cash is short: a negative cash_after shows the approver the shortfall,
        # and sufficient_cash says the order would be refused.
        return {
            "total": cents_to_dollars(total_cents),
            "cash_before": cents_to_dollars(cash_cents),
            "cash_after": cents_to_dollars(cash_cents - total_cents),
            "position_before": position,
            "position_after": position + args.quantity,
            "sufficient_cash": cash_cents >= total_cents,
        }

    async def execute(self, args: BuyArguments, execution: Execution) -> dict[str, Any]:
        fill = await self.ledger.buy(execution.request_id, args.symbol, args.quantity, args.price)
        return fill.to_dict()
