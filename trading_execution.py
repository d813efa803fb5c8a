"""Orders, fills and the simulated executor shared by the backtest and paper trading.

Records are frozen dataclasses; sides, order types and statuses are enums. The executor only
accepts an `ApprovedBasket`, which only `RiskManager.pre_trade_check` hands out, so no order can
reach a fill without passing the risk gate.

Fill convention: an order fills at the bar's price (the close, America/New_York session) moved
against the trader by the half-spread and the square-root market impact; commission, SEC fee and
FINRA TAF are charged to cash on top. Quantities are whole shares (int), or fractional shares
(float) when the sizing asks for them (`SizingConfig.fractional_shares`): a quantity keeps its type
from the target through the order, the fill and the ledger, so a whole-share run never sees a
float.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

import transaction_costs as tc
from error_handling import ConfigurationError
from quantities import Qty, as_qty


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(enum.StrEnum):
    MARKET = "market"
    MARKET_ON_CLOSE = "market_on_close"


class OrderStatus(enum.StrEnum):
    """An order's life cycle, one vocabulary end to end (Alpaca's words): new -> accepted ->
    partially_filled -> filled / canceled / rejected / expired."""

    NEW = "new"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def done(self) -> bool:
        """No more shares will fill (filled, canceled, rejected or expired)."""
        return self in _DONE


_DONE = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)


class Purpose(enum.StrEnum):
    """Why an order exists; reduce-only purposes may pass a halted risk gate."""

    ENTRY = "entry"
    EXIT = "exit"
    CARRY = "carry"  # the carried remainder of a partial fill
    LIQUIDATION = "liquidation"  # drawdown control
    BUY_IN = "buy_in"  # forced close of a recalled short


@dataclass(frozen=True, slots=True)
class Order:
    """An instruction to trade `qty` (> 0, finite) shares of `symbol`: an int for whole shares, a
    float for fractional shares."""

    symbol: str
    side: Side
    qty: Qty
    client_order_id: str
    order_type: OrderType = OrderType.MARKET_ON_CLOSE
    purpose: Purpose = Purpose.ENTRY

    def __post_init__(self) -> None:
        qty = self.qty
        number = int | float | np.integer | np.floating
        if isinstance(qty, bool) or not isinstance(qty, number) or not 0 < qty < math.inf:
            raise ConfigurationError(
                "order quantity must be a positive, finite number of shares (an int for whole "
                f"shares, a float for fractional shares): {qty!r}"
            )
        object.__setattr__(self, "qty", as_qty(qty))

    @property
    def signed_qty(self) -> Qty:
        """Shares added to the position: positive for a buy, negative for a sell."""
        return self.qty if self.side is Side.BUY else -self.qty


def client_order_id(*parts: object, prefix: str = "pt") -> str:
    """Deterministic id from what defines the order (run, bar, symbol, purpose, leg): a retry or
    restart of the same decision produces the same id, so the broker refuses a duplicate.
    `prefix` names who sends it: `pt-<home tag>` in a trading home (constants.Paths.order_tag),
    so two homes on one account never share an id."""
    # The repr of the list of parts is unambiguous (quotes escaped): ("a|b", "c") and
    # ("a", "b|c") must not share an id.
    text = repr([str(p) for p in parts])
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    return f"{prefix}-{digest}"


@dataclass(frozen=True, slots=True)
class ApprovedBasket:
    """Orders that passed `RiskManager.pre_trade_check` together, at `checked_at`."""

    orders: tuple[Order, ...]
    checked_at: object  # the market snapshot's time (pd.Timestamp)
    reduce_only: bool = False


@dataclass(frozen=True, slots=True)
class Fill:
    """What an order got. `price` includes spread and impact; the fees are charged on top."""

    client_order_id: str
    symbol: str
    side: Side
    qty: Qty  # shares filled (0 when nothing filled); a float for fractional shares
    requested_qty: Qty
    price: float  # USD per share, after spread and impact
    reference_price: float  # the bar price the fill is based on
    costs: tc.TradeCosts
    status: OrderStatus
    purpose: Purpose
    time: object  # bar time (pd.Timestamp)

    @property
    def signed_qty(self) -> Qty:
        return self.qty if self.side is Side.BUY else -self.qty

    @property
    def notional(self) -> float:
        """|qty| x fill price, USD."""
        return self.qty * self.price

    @property
    def cash_change(self) -> float:
        """Cash in (positive, sells) or out (negative, buys), after explicit fees."""
        c = self.costs
        return cash_change(self.signed_qty, self.price, c.commission, c.sec_fee, c.finra_taf)

    @property
    def unfilled_qty(self) -> Qty:
        return self.requested_qty - self.qty


class RemainderPolicy(enum.StrEnum):
    CANCEL = "cancel"  # the unfilled part of a capped order is cancelled
    CARRY = "carry"  # it is re-submitted (through the risk gate) on the next bar


@dataclass(frozen=True)
class ExecutionConfig:
    """How simulated orders fill. Every field has a default a new user can keep."""

    costs: tc.CostModel = field(default_factory=tc.CostModel)
    #: At most this fraction of average daily volume fills per order per bar.
    participation_cap: float = 0.10
    remainder: RemainderPolicy = RemainderPolicy.CANCEL
    #: Average daily dollar volume assumed when the source has no volume (the bundled data).
    default_adv_usd: float = 50_000_000.0
    #: Extra cost of a forced buy-in of a recalled short, in bps of the close.
    buy_in_penalty_bps: float = 100.0
    #: Symbols that are hard to borrow: a short in one is recalled on any bar with this chance.
    hard_to_borrow: frozenset[str] = frozenset()
    htb_recall_probability: float = 0.02
    #: Configured recall dates per symbol (ISO dates): a short open on that date is bought in.
    recall_dates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Random slippage (std, bps of the price) on top of the cost model; 0 = none.
    slippage_std_bps: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 < self.participation_cap <= 1:
            raise ConfigurationError(
                f"participation cap must be in (0, 1] of daily volume: {self.participation_cap}"
            )
        if not (self.default_adv_usd > 0 and math.isfinite(self.default_adv_usd)):
            raise ConfigurationError(
                f"default average daily volume must be positive: {self.default_adv_usd}"
            )
        if not 0 <= self.htb_recall_probability <= 1:
            raise ConfigurationError("hard-to-borrow recall probability must be in [0, 1]")
        if not (0 <= self.buy_in_penalty_bps < 10_000 and 0 <= self.slippage_std_bps < 1_000):
            raise ConfigurationError(
                "buy-in penalty must be in [0, 10000) bps and slippage std in [0, 1000) bps, got "
                f"{self.buy_in_penalty_bps!r} and {self.slippage_std_bps!r}"
            )


@dataclass(frozen=True, slots=True)
class BarQuote:
    """What the executor knows about a symbol on the bar it fills on."""

    price: float  # the bar's close, USD
    daily_vol: float  # std of daily returns (fraction), for market impact
    adv_shares: float  # average daily volume, shares
    time: object  # bar time (pd.Timestamp)


def fill_quantity(
    qty: Qty, participation_cap: float, adv_shares: float, fractional: bool, forced: bool
) -> Qty:
    """Shares of an order of `qty` that fill on one bar: at most `participation_cap` x average
    daily volume, whole shares unless `fractional`; a `forced` close (liquidation, buy-in) takes
    whatever the book gives, at the cost model's price. Compiled as it is by `fast_engine`."""
    if forced:
        return qty
    if fractional:  # the cap is not rounded either
        return min(qty, participation_cap * adv_shares)
    # The epsilon keeps 0.29 x 100 = 28.999999999999996 from capping a 29 share order at 28.
    return min(qty, math.floor(participation_cap * adv_shares + 1e-9))


def cash_change(
    signed_qty: Qty, price: float, commission: float, sec_fee: float, finra_taf: float
) -> float:
    """Cash in (positive, sells) or out (negative, buys) of a fill at `price` USD, after the
    explicit fees. Compiled as it is by `fast_engine`."""
    return -signed_qty * price - (commission + sec_fee + finra_taf)


class OrderExecutor:
    """Simulated fills for approved orders: cost model, participation cap, seeded slippage."""

    def __init__(self, config: ExecutionConfig | None = None):
        self.config = config or ExecutionConfig()
        self._rng = np.random.default_rng(self.config.seed)

    def execute(self, basket: ApprovedBasket, quotes: Mapping[str, BarQuote]) -> list[Fill]:
        """Fill every order of an approved basket on this bar; see the module docstring."""
        if not isinstance(basket, ApprovedBasket):
            raise TypeError("OrderExecutor.execute takes an ApprovedBasket from pre_trade_check")
        return [self._fill(order, quotes[order.symbol]) for order in basket.orders]

    def _fill(self, order: Order, quote: BarQuote) -> Fill:
        cfg = self.config
        qty = fill_quantity(
            order.qty,
            cfg.participation_cap,
            quote.adv_shares,
            isinstance(order.qty, float),
            order.purpose in (Purpose.LIQUIDATION, Purpose.BUY_IN),
        )
        status = OrderStatus.FILLED if qty == order.qty else OrderStatus.PARTIALLY_FILLED
        if qty <= 0:
            status = OrderStatus.CANCELED
        price = quote.price
        if order.purpose is Purpose.BUY_IN:
            price *= 1.0 + cfg.buy_in_penalty_bps / 1e4
        if cfg.slippage_std_bps > 0 and qty > 0:
            noise = abs(float(self._rng.normal(0.0, cfg.slippage_std_bps))) / 1e4
            price *= 1.0 + noise if order.side is Side.BUY else 1.0 - noise
        fill_price, costs = tc.order_fill(
            order.side,  # a StrEnum is the str "buy"/"sell" (.value is a slow property)
            qty,
            price,
            daily_vol=quote.daily_vol,
            adv_shares=quote.adv_shares,
            trade_date=quote.time,
            model=cfg.costs,
        )
        return Fill(
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            qty=qty,
            requested_qty=order.qty,
            price=fill_price,
            reference_price=quote.price,
            costs=costs,
            status=status,
            purpose=order.purpose,
            time=quote.time,
        )


def orders_toward(
    positions: Mapping[str, Qty],
    target: Mapping[str, Qty],
    purpose: Purpose,
    id_parts: tuple[object, ...],
    prefix: str = "pt",
) -> tuple[list[Order], list[Order]]:
    """(reducing orders, increasing orders) that move signed share `positions` to `target`.

    A flip (long to short) is split: the reduce list closes the old side, the increase list opens
    the new one, so the two can pass the risk gate separately (a reduce-only basket always can).
    Client order ids come from `id_parts` + (symbol, purpose, "reduce"|"open"): the same decision
    always gets the same ids.

    A close sells (or buys back) exactly the held quantity, so a closed position is exactly 0 in
    fractional shares too."""
    reduce: list[Order] = []
    increase: list[Order] = []
    for sym, want in target.items():
        cut, add = leg_orders(as_qty(positions.get(sym, 0)), as_qty(want))
        if cut != 0:
            exit_purpose = Purpose.EXIT if purpose is Purpose.ENTRY else purpose
            cid = client_order_id(*id_parts, sym, exit_purpose, "reduce", prefix=prefix)
            side = Side.BUY if cut > 0 else Side.SELL
            reduce.append(Order(sym, side, abs(cut), cid, purpose=exit_purpose))
        if add != 0:
            cid = client_order_id(*id_parts, sym, purpose, "open", prefix=prefix)
            side = Side.BUY if add > 0 else Side.SELL
            increase.append(Order(sym, side, abs(add), cid, purpose=purpose))
    return reduce, increase


def leg_orders(have: Qty, want: Qty) -> tuple[Qty, Qty]:
    """(reducing, increasing) signed shares (+ buy, - sell; 0 none) that move one leg from
    `have` to `want`: a flip closes the old side first, then opens the new one. Compiled as it
    is by `fast_engine`."""
    cut = have * 0  # zero of the quantities' type (int, or float for fractional shares)
    if have == want:
        return cut, cut
    if have != 0 and (want == 0 or (want > 0) != (have > 0) or abs(want) < abs(have)):
        crossing = want == 0 or (want > 0) != (have > 0)
        closing = abs(have) if crossing else abs(have) - abs(want)
        cut = -closing if have > 0 else closing
        # Closed, or reduced to the target (in floats have - closing may miss it by an ulp,
        # which must not become an order of 1e-12 shares).
        have = 0 if crossing else want
    add = want - have if want != have else want * 0
    return cut, add
