"""Read-only Streamlit dashboard over one TRADING_HOME: is the loop alive, what it holds, the pair's
spread, backtest runs, alerts, the model registry and the audit chain.

Run `streamlit run dashboard.py` from the project directory (or `python main.py dashboard`). It
never writes a file: every panel only reads what `main.py live`, `backtest`, `train` and the alert
dispatcher wrote, and each panel degrades on its own (a missing file says which command makes it; a
corrupt one is one error line in its own panel). Large logs are read from their last
`TAIL_BYTES`, and every file read is cached on (path, mtime, size), so an unchanged file costs
nothing on the next refresh.
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # `streamlit run` from elsewhere, or AppTest
    sys.path.insert(0, str(_HERE))

import constants as C  # noqa: E402
from trial_ledger import deflated_over  # noqa: E402

# --- Settings -------------------------------------------------------------------------------------
ENV_REFRESH_S = "DASHBOARD_REFRESH_S"
#: Seconds between automatic refreshes; 0 turns them off.
DEFAULT_REFRESH_S = 30.0
#: Only the last this many bytes of alerts.log and audit.jsonl are parsed for tables and markers.
TAIL_BYTES = 2 * 1024 * 1024
#: Newest alerts shown in the table after the severity filter.
MAX_ALERT_ROWS = 2_000
#: The loop counts as stale when its heartbeat is older than this many loop intervals.
STALE_INTERVALS = 3
#: The live loop's default interval (seconds) when no `start` record in the audit log says it.
DEFAULT_INTERVAL_S = 300.0
#: The z-score rule's bands, as in `main.py backtest` (--zscore-entry / --zscore-exit defaults).
ZSCORE_ENTRY, ZSCORE_EXIT = 2.0, 0.5
#: Bars (trading days) shown in the prices and spread chart.
PRICE_WINDOW_BARS = 250
SEVERITIES = ("INFO", "WARNING", "MEDIUM", "HIGH", "CRITICAL")
#: `main.py scan` writes results/scan-<UTC stamp>/; its best this many pairs are listed.
SCAN_PREFIX = "scan-"
SCAN_TOP_ROWS = 20
#: Keys of .env the dashboard takes (never secrets: it needs no credentials).
_ENV_KEYS = (C.ENV_TRADING_HOME, C.ENV_TICKER_LONG, C.ENV_TICKER_SHORT, ENV_REFRESH_S)

LIVE_HINT = "run `python main.py live` (or `python main.py live --replay 2022-01-03 2022-03-31`)"
_BADGE = (
    "<div style='display:inline-block;padding:0.35rem 1.1rem;border-radius:0.5rem;"
    "background:{bg};color:#ffffff;font-size:2rem;font-weight:800;letter-spacing:0.05em'>"
    "{text}</div>"
)


# --- Small helpers --------------------------------------------------------------------------------
def _load_env_file() -> None:
    """Take TRADING_HOME, TICKER_* and DASHBOARD_REFRESH_S from the project's .env (or
    $TRADING_ENV_FILE), like `main.py` does (variables already set win); credentials in .env are
    left unread."""
    env_file = C.env_file()
    if not env_file.is_file():
        return
    try:
        from dotenv import dotenv_values
    except ImportError:
        return
    for key, value in dotenv_values(env_file).items():
        if key in _ENV_KEYS and value and key not in os.environ:
            os.environ[key] = value


def _stat(path: Path) -> tuple[int, int] | None:
    """(mtime in ns, size in bytes) of `path`, or None when it is absent: the cache key."""
    try:
        s = path.stat()
    except OSError:
        return None
    return (s.st_mtime_ns, s.st_size)


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when the message is empty)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _ago(seconds: float) -> str:
    """'42 s', '5 min', '3.2 h', '2.0 d' ago."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _badge(text: str, bg: str) -> None:
    """A big coloured label; `text` is escaped (it may come from a file)."""
    st.markdown(_BADGE.format(bg=bg, text=html.escape(text)), unsafe_allow_html=True)


def _tail_lines(path: Path, max_bytes: int) -> tuple[list[str], bool]:
    """The complete lines in the last `max_bytes` of `path`, and whether the file was cut."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read()
    if start > 0:  # the first line is (probably) partial: drop it
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return [line for line in lines if line.strip()], start > 0


# --- Cached readers (keyed on path, mtime, size; they raise on corrupt files) -------------------
@st.cache_data(max_entries=32, show_spinner=False)
def _read_json(path: str, mtime_ns: int, size: int) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@st.cache_data(max_entries=8, show_spinner=False)
def _read_alerts(path: str, mtime_ns: int, size: int) -> tuple[pd.DataFrame, int, bool]:
    """(alerts newest first, unreadable lines skipped, file longer than TAIL_BYTES)."""
    lines, cut = _tail_lines(Path(path), TAIL_BYTES)
    rows, skipped = [], 0
    for line in lines:
        try:
            rec = json.loads(line)
            rows.append(
                {
                    "time": str(rec["time"]),
                    "severity": str(rec["severity"]).upper(),
                    "source": str(rec.get("source", "")),
                    "title": str(rec.get("title", "")),
                    "message": str(rec.get("message", "")),
                }
            )
        except (ValueError, KeyError, TypeError):
            skipped += 1
    frame = pd.DataFrame(rows, columns=["time", "severity", "source", "title", "message"])
    return frame.iloc[::-1].reset_index(drop=True), skipped, cut


@st.cache_data(max_entries=8, show_spinner=False)
def _read_audit_tail(path: str, mtime_ns: int, size: int) -> list[dict[str, Any]]:
    """Parsed records in the last TAIL_BYTES of the audit log, oldest first (bad lines skipped:
    the chain check reports them)."""
    records = []
    for line in _tail_lines(Path(path), TAIL_BYTES)[0]:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("payload"), dict):
            records.append(rec)
    return records


@st.cache_data(max_entries=8, show_spinner=False)
def _verify_audit(path: str, mtime_ns: int, size: int) -> tuple[bool, int, str]:
    """(chain intact, records verified, one-line verdict) from `audit_logging.verify`."""
    import audit_logging

    result = audit_logging.verify(Path(path))
    return result.ok, result.count, result.describe(path)


@st.cache_data(max_entries=8, show_spinner=False)
def _read_closes(path: str, mtime_ns: int, size: int, long: str, short: str) -> pd.DataFrame:
    """Both legs' closes and the spread z-score of the backtest's z-score rule (60-bar rolling
    hedge ratio on log closes, causal), over the whole processed history."""
    import numpy as np

    from backtest_strategy import rolling_spread_zscore

    columns = [f"{long}_close", f"{short}_close"]
    table = pd.read_parquet(path, columns=columns)
    closes = table[columns].astype("float64")
    closes.columns = [long, short]
    closes["zscore"] = rolling_spread_zscore(
        np.log(closes[long].to_numpy()), np.log(closes[short].to_numpy())
    )
    return closes


@st.cache_data(max_entries=8, show_spinner=False)
def _read_run(
    folder: str, summary_stat: tuple[int, int], equity_stat: tuple[int, int]
) -> tuple[dict[str, Any], pd.DataFrame]:
    """summary.json and equity.csv of one backtest run (the stats are the cache key)."""
    summary = json.loads((Path(folder) / "summary.json").read_text(encoding="utf-8"))
    equity = pd.read_csv(Path(folder) / "equity.csv", parse_dates=["date"], index_col="date")
    return summary, equity


def _ci_text(ci: Any) -> str:
    if isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
        return f"{ci[0]:.3f} .. {ci[1]:.3f}"
    return "—"


@st.cache_data(max_entries=8, show_spinner=False)
def _read_registry(models_dir: str, stamp: tuple[Any, ...]) -> pd.DataFrame:
    """One row per registered model with its holdout metrics and artifact check (`stamp` is the
    stat of registry.json and of every artifact, so a changed file is re-verified)."""
    from model_management import ModelRegistry

    registry = ModelRegistry(Path(models_dir))
    rows = []
    for rec in registry.list():
        metrics = rec.metadata.get("holdout_metrics") or {}
        bad = registry.verify(rec.version)
        rows.append(
            {
                "version": rec.version,
                "kind": rec.name,
                "status": rec.status.value,
                "traffic": rec.traffic_fraction,
                "holdout accuracy": metrics.get("accuracy"),
                "holdout ROC AUC": metrics.get("roc_auc"),
                "AUC 95 % CI": _ci_text(metrics.get("roc_auc_ci_95")),
                "accuracy p vs majority": metrics.get("accuracy_p_value"),
                "holdout log loss": metrics.get("log_loss"),
                "holdout rows": metrics.get("rows"),
                "integrity": "ok" if not bad else "BAD: " + ", ".join(bad),
                "pair": f"{rec.long}/{rec.short}",
                "created": rec.created,
            }
        )
    return pd.DataFrame(rows)


@st.cache_data(max_entries=8, show_spinner=False)
def _equity_log(path: str, stat: tuple[int, int]) -> pd.DataFrame:
    """data/equity_<mode>.csv, one row per bar (the stats are the cache key)."""
    import live_trading

    return live_trading.read_equity_log(Path(path))


# --- Panels ---------------------------------------------------------------------------------------
def _loop_interval_s(audit: Sequence[dict[str, Any]]) -> float:
    """The interval of the last `start` in the audit tail, else DEFAULT_INTERVAL_S."""
    for rec in reversed(audit):
        if rec.get("event") == "start":
            value = rec["payload"].get("interval_s")
            if isinstance(value, int | float) and value > 0:
                return float(value)
            break
    return DEFAULT_INTERVAL_S


def _audit_tail(home: C.Paths) -> list[dict[str, Any]]:
    stat = _stat(home.audit_log)
    return [] if stat is None else _read_audit_tail(str(home.audit_log), *stat)


def _heartbeat(home: C.Paths) -> dict[str, Any] | None:
    """data/heartbeat.json as the loop's `Heartbeat` fields (defaults filled in), None when
    absent; ValueError naming the file when it is not a heartbeat."""
    stat = _stat(home.heartbeat_file)
    if stat is None:
        return None
    import live_trading

    raw = _read_json(str(home.heartbeat_file), *stat)
    try:
        return live_trading.Heartbeat.from_json(raw).to_json()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{home.heartbeat_file} is not a heartbeat ({exc})") from None


def _loop_pid(home: C.Paths) -> int | None:
    """The pid of the `main.py live` holding this home's lock (-1: held, pid unknown), None when
    no loop runs. Never cached: the lock, not the heartbeat, says whether the loop is alive."""
    import live_trading

    return live_trading.loop_pid(home)


def panel_live_status(home: C.Paths, pair: C.Pair) -> None:
    """Mode badge, loop running/stale/stopped/dead, market now, halt, circuit breakers and the
    last broker error."""
    beat: dict[str, Any] = _heartbeat(home) or {}
    pid = _loop_pid(home)
    if not beat:
        _badge("NO HEARTBEAT", "#6b7280")
        st.info(f"No heartbeat yet: {LIVE_HINT} to create data/heartbeat.json")
    else:
        mode = str(beat.get("mode", "")).lower()
        if mode == "live":
            _badge("LIVE — REAL MONEY", "#c62828")
        elif mode == "paper":
            _badge("PAPER", "#1b8a3a")
        else:
            _badge(f"MODE {mode.upper() or 'UNKNOWN'}", "#6b7280")

    now = pd.Timestamp.now(tz="UTC")
    cols = st.columns(4)
    pid_text = "pid unknown" if pid == -1 else f"pid {pid}"
    if beat:
        age_s = (now - pd.Timestamp(beat["time"])).total_seconds()
        interval_s = _loop_interval_s(_audit_tail(home))
        said = str(beat.get("status") or "?")
        if pid is None:  # no process holds the lock: whatever the heartbeat says, none runs
            state = "STOPPED" if said == "stopped" else "NOT RUNNING"
        elif age_s > STALE_INTERVALS * interval_s:
            state = "STALE"
        else:
            state = "RUNNING"
        delta = f"heartbeat {_ago(age_s)} ago" + (f", {pid_text}" if pid is not None else "")
        cols[0].metric("Loop", state, delta, delta_color="off", delta_arrow="off")
        if state == "NOT RUNNING":
            st.error(
                f"The loop is not running (last heartbeat said {said}: it died). Its pid "
                f"{beat.get('pid')} holds no lock on {home.live_lock_file.name} and its last "
                f"heartbeat is {_ago(age_s)} old; {LIVE_HINT} to restart it."
            )
        elif state == "STALE":
            st.warning(
                f"No heartbeat for {_ago(age_s)} (more than {STALE_INTERVALS} x the "
                f"{interval_s:g} s interval): the live loop ({pid_text}) still holds the lock "
                "but may be stuck"
            )
    elif pid is not None:
        cols[0].metric(
            "Loop", "RUNNING", f"{pid_text}, no heartbeat yet", delta_color="off", delta_arrow="off"
        )
    else:
        cols[0].metric("Loop", "NOT STARTED")

    from data_validation import market_clock

    clock = market_clock(now)
    cols[1].metric(
        "Market now",
        "OPEN" if clock.is_open else "CLOSED",
        f"closes {clock.next_close:%Y-%m-%d %H:%M} UTC"
        if clock.is_open
        else f"opens {clock.next_open:%Y-%m-%d %H:%M} UTC",
        delta_color="off",
        delta_arrow="off",
    )

    halted, reason, since = bool(beat.get("halted")), beat.get("halt_reason"), None
    risk_stat = _stat(home.risk_state_file)
    if risk_stat is not None:  # the risk manager's own file is the authority on the halt
        risk = _read_json(str(home.risk_state_file), *risk_stat)
        halted, reason, since = (
            bool(risk.get("halted")),
            risk.get("halt_reason"),
            risk.get("halted_at"),
        )
    cols[2].metric("Trading", "HALTED" if halted else "not halted")
    cols[3].metric(
        "Broker",
        str(beat.get("broker", "—")),
        f"last bar {beat.get('last_bar') or '—'}",
        delta_color="off",
        delta_arrow="off",
    )
    if halted:
        st.error(
            f"HALTED{f' since {since}' if since else ''}: {reason or 'no reason recorded'}. "
            "New entries are refused; `python main.py risk reset` clears it."
        )

    breakers = beat.get("circuit_breakers") or {}
    if breakers:
        text = ", ".join(f"{name}: **{state_}**" for name, state_ in sorted(breakers.items()))
        (st.error if any(v != "closed" for v in breakers.values()) else st.caption)(
            f"Circuit breakers: {text}"
        )
    elif beat:
        st.caption(f"Circuit breakers: none reported by the {beat.get('broker', '?')} broker")
    if beat.get("broker_error"):
        error = str(beat["broker_error"]).replace("$", "\\$")  # no LaTeX from a message
        st.error(f"Last broker error: {error}")
    if beat:
        st.caption(
            f"Heartbeat {beat['time']} (loop clock {beat.get('loop_time', '—')}); "
            f"stale after {STALE_INTERVALS} x the loop interval. Pair {pair.long}/{pair.short}."
        )


def panel_positions(home: C.Paths, pair: C.Pair) -> None:
    """positions.json as a table with unrealized P&L; cash, equity; equity over time."""
    import live_trading

    state = live_trading.read_positions(home.positions_file)
    if state is None:
        st.info(f"No positions yet: {LIVE_HINT} to create positions.json")
        _foreign_positions(home, pair, None)
        return
    rows = []
    for sym, p in sorted(state.positions.items()):
        qty, avg, price = float(p.qty), p.avg_entry_price, p.market_price
        rows.append(
            {
                "leg": sym,
                "side": "long" if qty > 0 else "short" if qty < 0 else "flat",
                "qty": p.qty,  # int, or a float in fractional shares
                "avg entry": avg,
                "market price": price,
                "market value": qty * price,
                "unrealized P&L": qty * (price - avg),
            }
        )
    table = pd.DataFrame(
        rows,
        columns=[
            "leg",
            "side",
            "qty",
            "avg entry",
            "market price",
            "market value",
            "unrealized P&L",
        ],
    )
    cash, equity = state.cash, state.equity
    c = st.columns(4)
    c[0].metric("Equity", f"${equity:,.2f}")
    c[1].metric("Cash", f"${cash:,.2f}")
    c[2].metric("Unrealized P&L", f"${table['unrealized P&L'].sum():,.2f}")
    c[3].metric("Gross exposure", f"${table['market value'].abs().sum():,.2f}")
    if rows:
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                k: st.column_config.NumberColumn(format="%.2f")
                for k in ("avg entry", "market price", "market value", "unrealized P&L")
            },
        )
    else:
        st.caption("Flat: no open position.")
    _foreign_positions(home, pair, state)
    open_orders = list(state.open_orders)
    if open_orders:
        st.warning(f"{len(open_orders)} open order(s) at the broker")
        st.dataframe(pd.DataFrame(open_orders), hide_index=True)
    st.caption(
        f"{home.positions_file} · {state.mode} · {state.broker} broker · "
        f"updated {state.updated_at} · last processed bar {state.last_processed_bar or '—'}"
    )
    _equity_over_time(home, state)


def _foreign_positions(home: C.Paths, pair: C.Pair, state: Any) -> None:
    """A warning listing the account's positions outside the pair (symbol, signed shares, price,
    value): from positions.json's `foreign` (the loop writes it with every save, prices
    included), else, with no positions.json, from the heartbeat's `foreign_positions` (shares
    only). The loop never trades them and keeps them out of the pair's risk limits."""
    if state is not None:
        held: list[tuple[str, int, float | None]] = [
            (sym, int(p.qty), float(p.market_price)) for sym, p in sorted(state.foreign.items())
        ]
        source = home.positions_file.name
    else:
        try:
            beat = _heartbeat(home) or {}
        except ValueError:  # the live status panel reports the unreadable heartbeat
            beat = {}
        foreign = beat.get("foreign_positions") or {}
        held = [(str(sym), int(qty), None) for sym, qty in sorted(foreign.items())]
        source = home.heartbeat_file.name
    held = [h for h in held if h[1]]
    if not held:
        return
    items = []
    for sym, qty, price in held:
        if price is None or not math.isfinite(price):
            items.append(f"{sym} {qty:+,} shares (price not recorded)")
        else:
            items.append(f"{sym} {qty:+,} shares at {price:,.2f} USD = {qty * price:,.2f} USD")
    st.warning(
        f"{len(held)} position(s) outside the pair {pair.long}/{pair.short} in the account: "
        + "; ".join(items)
        + ". They are not traded by the loop and are kept out of the pair's limits "
        f"(exposure, position sizes); from {source}."
    )


def _equity_over_time(home: C.Paths, state: Any) -> None:
    """The loop's equity row per bar (data/equity_<mode>.csv, written by the loop after each
    bar's decision: the same accounting as a backtest's equity.csv)."""
    import plotly.graph_objects as go

    import live_trading

    path = live_trading.equity_log_path(home, state.mode)
    stat = _stat(path)
    if stat is None:
        st.caption(f"Equity over time: no {path.name} yet (the loop writes a row per bar).")
        return
    try:
        log_rows = _equity_log(str(path), stat)
    except (ValueError, KeyError, OSError) as exc:
        st.error(f"{path} is unreadable: {exc}")
        return
    if len(log_rows) < 2:
        st.caption(f"Equity over time: one bar so far in {path.name}.")
        return
    fig = go.Figure(go.Scatter(x=log_rows.index, y=log_rows["equity"], name="equity"))
    fig.update_layout(
        title=f"{state.mode.capitalize()} equity (USD) at each bar's close",
        height=300,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    st.plotly_chart(fig, key="equity_over_time")
    st.caption(
        f"From {path}: cash plus positions marked at each close after that bar's decision, "
        f"borrow included (${log_rows['borrow_paid'].iloc[-1]:,.2f} so far)."
    )


def panel_prices(home: C.Paths, pair: C.Pair) -> None:
    """Both legs' closes (normalised to 100), the spread z-score with the rule's bands, and the
    live loop's recent signals from the audit log."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    path = home.processed_file(pair)
    stat = _stat(path)
    if stat is None:
        st.info(
            f"No processed data for {pair.long}/{pair.short}: run `python main.py process` to "
            f"create data/{path.name}"
        )
        return
    closes = _read_closes(str(path), *stat, pair.long, pair.short)
    signals = [
        (pd.Timestamp(rec["payload"]["bar"]), str(rec["payload"].get("signal", "")))
        for rec in _audit_tail(home)
        if rec.get("event") == "signal" and rec["payload"].get("bar")
    ]
    end = closes.index[-1]
    if signals:  # follow the live loop (a replay's bars can end before the file does)
        end = min(end, max(bar for bar, _ in signals))
    window = closes.loc[:end].tail(PRICE_WINDOW_BARS)

    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        row_heights=[0.55, 0.45],
        subplot_titles=("Closes, normalised to 100", "Spread z-score (60-bar hedge ratio)"),
    )
    for leg in (pair.long, pair.short):
        fig.add_trace(
            go.Scatter(x=window.index, y=100 * window[leg] / window[leg].iloc[0], name=leg),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(x=window.index, y=window["zscore"], name="z-score", line={"color": "#444444"}),
        row=2,
        col=1,
    )
    for level, dash, color in ((ZSCORE_ENTRY, "dash", "#c62828"), (ZSCORE_EXIT, "dot", "#888888")):
        for sign in (1, -1):
            fig.add_hline(y=sign * level, line_dash=dash, line_color=color, row=2, col=1)
    shown = [(bar, sig) for bar, sig in signals if bar in window.index and sig != C.HOLD_SIGNAL]
    for label, wanted, symbol, color in (
        (pair.buy_signal, pair.buy_signal, "triangle-up", "#1b8a3a"),
        (pair.sell_signal, pair.sell_signal, "triangle-down", "#c62828"),
    ):
        bars = [bar for bar, sig in shown if sig == wanted]
        if bars:
            fig.add_trace(
                go.Scatter(
                    x=bars,
                    y=window.loc[bars, "zscore"],
                    mode="markers",
                    name=label,
                    marker={"symbol": symbol, "size": 11, "color": color},
                ),
                row=2,
                col=1,
            )
    fig.update_layout(
        height=520, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"orientation": "h"}
    )
    st.plotly_chart(fig, key="prices_spread")
    z = window["zscore"].iloc[-1]
    st.caption(
        f"{path.name}: {window.index[0]:%Y-%m-%d}..{window.index[-1]:%Y-%m-%d}; last z-score "
        f"{z:+.2f}; bands ±{ZSCORE_ENTRY:g} (entry) and ±{ZSCORE_EXIT:g} (exit); "
        f"{len(shown)} buy/sell signal(s) of the live loop marked (audit log)."
    )


#: Folder-name prefixes of results that are not backtest runs (`scan`, `sweep`).
_OTHER_RESULTS = (SCAN_PREFIX, "sweep-")


def _run_folders(results_dir: Path, prefix: str | None = None) -> list[Path]:
    """Finished runs (folders with a summary.json), newest first: backtest runs, or with
    `prefix` ("sweep-", "scan-") those of that command."""
    if not results_dir.is_dir():
        return []
    runs = [
        d
        for d in results_dir.iterdir()
        if d.is_dir()
        and not d.name.startswith(".")
        and (d / "summary.json").is_file()
        and (d.name.startswith(prefix) if prefix else not d.name.startswith(_OTHER_RESULTS))
    ]
    return sorted(
        runs, key=lambda d: ((d / "summary.json").stat().st_mtime_ns, d.name), reverse=True
    )


_METRICS: tuple[tuple[str, str, str], ...] = (
    ("total_return", "total return", "{:+.2%}"),
    ("cagr", "CAGR", "{:+.2%}"),
    ("sharpe", "Sharpe", "{:.2f}"),
    ("sharpe_ci_95", "Sharpe 95 % CI", "{:.2f} .. {:.2f}"),
    ("psr", "P(Sharpe > 0)", "{:.3f}"),
    ("dsr", "deflated Sharpe", "{:.3f}"),
    ("trials", "trials (deflated by)", "{:,.0f}"),
    ("p_vs_zscore", "vs z-score rule: p", "{:.3f}"),
    ("p_vs_buy_hold", "vs buy & hold: p", "{:.3f}"),
    ("sortino", "Sortino", "{:.2f}"),
    ("max_drawdown", "max drawdown", "{:.2%}"),
    ("calmar", "Calmar", "{:.2f}"),
    ("var_95", "VaR 95 % (1 day)", "{:.2%}"),
    ("final_equity", "final equity (USD)", "{:,.2f}"),
    ("fills", "fills", "{:,.0f}"),
    ("round_trips", "round trips", "{:,.0f}"),
    ("win_rate", "win rate", "{:.1%}"),
    ("total_costs", "costs (USD)", "{:,.2f}"),
)


def _metrics_table(summary: dict[str, Any], long: str) -> pd.DataFrame:
    benchmarks = summary.get("benchmarks") or {}
    columns = {
        f"strategy ({summary.get('run', {}).get('strategy', '?')})": summary.get("strategy") or {},
        "z-score rule": benchmarks.get("zscore_rule") or {},
        f"buy & hold {long}": benchmarks.get("buy_hold_long") or {},
    }
    table = {}
    for name, stats in columns.items():
        cells = []
        for key, _label, fmt in _METRICS:
            value = stats.get(key)
            if key == "trials" and isinstance(value, int):  # a DSR names its trials and when
                cells.append(deflated_over(value, stats.get("trials_as_of")))
            elif isinstance(value, list) and all(isinstance(v, int | float) for v in value):
                cells.append(fmt.format(*value))
            else:
                cells.append(fmt.format(value) if isinstance(value, int | float) else "—")
        table[name] = cells
    return pd.DataFrame(table, index=[label for _k, label, _f in _METRICS])


def panel_backtests(home: C.Paths, pair: C.Pair) -> None:
    """A run from results/: equity against both benchmarks, drawdown, and the metrics table."""
    import plotly.graph_objects as go

    runs = _run_folders(home.results_dir)
    if not runs:
        st.info(
            "No backtest results yet: run `python main.py backtest` (e.g. `python main.py "
            "backtest --start 2022-01-03`) to create results/<run-id>/"
        )
        return
    choice = st.selectbox("Run (newest first)", [d.name for d in runs], key="backtest_run")
    folder = home.results_dir / str(choice)
    stat = _stat(folder / "summary.json")
    eq_stat = _stat(folder / "equity.csv")
    if stat is None or eq_stat is None:
        st.error(f"{folder} has no summary.json or equity.csv: the run is incomplete")
        return
    summary, equity = _read_run(str(folder), stat, eq_stat)
    run = summary.get("run") or {}
    long, short = (run.get("pair") or [pair.long, pair.short])[:2]
    st.caption(
        f"{long}/{short} · {run.get('start')}..{run.get('end')} · {run.get('bars')} bars · "
        f"strategy {run.get('strategy')} · models {', '.join(run.get('versions') or []) or '—'}"
    )
    if run.get("in_sample"):
        st.warning(
            "This run overlaps the model's training data (in-sample): its results flatter it"
        )

    left, right = st.columns(2)
    fig = go.Figure()
    for column, name in (
        ("equity", "strategy"),
        ("zscore_rule_equity", "z-score rule"),
        ("buy_hold_equity", f"buy & hold {long}"),
    ):
        if column in equity:
            fig.add_trace(go.Scatter(x=equity.index, y=equity[column], name=name))
    fig.update_layout(
        title="Equity (USD)",
        height=300,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h"},
    )
    left.plotly_chart(fig, key="backtest_equity")
    if "drawdown" in equity:
        dd = go.Figure(
            go.Scatter(
                x=equity.index,
                y=100 * equity["drawdown"],
                fill="tozeroy",
                name="drawdown",
                line={"color": "#c62828"},
            )
        )
        dd.update_layout(
            title="Strategy drawdown (%)", height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10}
        )
        right.plotly_chart(dd, key="backtest_drawdown")
    verdict = (summary.get("strategy") or {}).get("verdict")
    if verdict:
        st.markdown(f"**Verdict:** {verdict}")
    sharpe_fig = _sharpe_error_bars(summary, long)
    if sharpe_fig is not None:
        st.plotly_chart(sharpe_fig, key="backtest_sharpe_ci")
    st.table(_metrics_table(summary, long))


def _sharpe_error_bars(summary: dict[str, Any], long: str) -> Any:
    """Each column's Sharpe with its 95 % bootstrap interval as an error bar (None for a run
    written before the intervals existed)."""
    import plotly.graph_objects as go

    benchmarks = summary.get("benchmarks") or {}
    columns = (
        ("strategy", summary.get("strategy") or {}),
        ("z-score rule", benchmarks.get("zscore_rule") or {}),
        (f"buy & hold {long}", benchmarks.get("buy_hold_long") or {}),
    )
    names, sharpe, up, down = [], [], [], []
    for name, stats in columns:
        ci, value = stats.get("sharpe_ci_95"), stats.get("sharpe")
        if not isinstance(value, int | float) or not ci or None in ci:
            continue
        names.append(name)
        sharpe.append(value)
        up.append(max(ci[1] - value, 0.0))
        down.append(max(value - ci[0], 0.0))
    if not names:
        return None
    fig = go.Figure(
        go.Bar(
            x=names,
            y=sharpe,
            error_y={"type": "data", "symmetric": False, "array": up, "arrayminus": down},
            name="Sharpe",
        )
    )
    fig.add_hline(y=0.0, line={"color": "#888", "width": 1})
    fig.update_layout(
        title="Sharpe ratio with its 95 % interval (stationary bootstrap)",
        height=280,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig


def panel_sweeps(home: C.Paths, pair: C.Pair) -> None:
    """A `main.py sweep` from results/sweep-*/: the walk-forward figures, the chosen parameter
    set per window, and the out-of-sample equity."""
    import plotly.graph_objects as go

    runs = _run_folders(home.results_dir, "sweep-")
    if not runs:
        st.info(
            "No parameter sweep yet: run `python main.py sweep` (e.g. `python main.py sweep "
            "--long AMD --short BAC`) to create results/sweep-<stamp>/"
        )
        return
    choice = st.selectbox("Sweep (newest first)", [d.name for d in runs], key="sweep_run")
    folder = home.results_dir / str(choice)
    stat, eq_stat = _stat(folder / "summary.json"), _stat(folder / "equity.csv")
    if stat is None or eq_stat is None:
        st.error(f"{folder} has no summary.json or equity.csv: the sweep is incomplete")
        return
    summary, equity = _read_run(str(folder), stat, eq_stat)
    run, wf = summary.get("run") or {}, summary.get("walk_forward") or {}
    hind = summary.get("best_fixed_in_hindsight") or {}
    sets = summary.get("candidates") or []
    st.caption(
        f"{'/'.join(run.get('pair') or [])} · {run.get('source')} · {len(sets)} parameter sets · "
        f"{run.get('windows')} out-of-sample windows {run.get('oos_start')}..{run.get('oos_end')}"
        f" · each chosen on the previous {run.get('train_windows')} windows"
    )
    rows = {
        "Sharpe": "{:.2f}".format(wf["sharpe"]) if wf.get("sharpe") is not None else "—",
        "Sharpe 95 % CI": _ci_text(wf.get("sharpe_ci_95")),
        "P(Sharpe > 0)": "{:.3f}".format(wf["psr"]) if wf.get("psr") is not None else "—",
        "deflated Sharpe": "{:.3f}".format(wf["dsr"]) if wf.get("dsr") is not None else "—",
        "trials (deflated by)": deflated_over(wf.get("trials", 0), wf.get("trials_as_of")),
        "total return": "{:+.2%}".format(wf["total_return"])
        if wf.get("total_return") is not None
        else "—",
        "trades": f"{wf.get('fills', 0):,}",
        "best fixed set in hindsight (not tradable)": f"{hind.get('label')}: Sharpe "
        + ("{:.2f}".format(hind["sharpe"]) if hind.get("sharpe") is not None else "—"),
    }
    left, right = st.columns(2)
    left.table(pd.DataFrame({"walk-forward (out of sample)": rows}))
    choices = pd.DataFrame(summary.get("choices") or [])
    if not choices.empty:
        fig = go.Figure(
            go.Scatter(
                x=pd.to_datetime(choices["trading_start"]),
                y=choices["label"],
                mode="lines+markers",
                line={"shape": "hv"},
                customdata=choices[["trading_end", "in_sample_sharpe", "oos_return"]],
                hovertemplate="%{x|%Y-%m-%d} .. %{customdata[0]}<br>%{y}<br>in-sample Sharpe "
                "%{customdata[1]:.2f}<br>out-of-sample return %{customdata[2]:+.2%}<extra></extra>",
                name="chosen set",
            )
        )
        fig.update_layout(
            title="Chosen parameter set per window",
            height=300,
            margin={"l": 10, "r": 10, "t": 40, "b": 10},
            yaxis={"categoryorder": "array", "categoryarray": [c["label"] for c in sets]},
        )
        right.plotly_chart(fig, key="sweep_choices")
    if "equity" in equity:
        eq = go.Figure(go.Scatter(x=equity.index, y=equity["equity"], name="walk-forward"))
        eq.update_layout(
            title="Walk-forward equity, out-of-sample windows only (USD)",
            height=300,
            margin={"l": 10, "r": 10, "t": 40, "b": 10},
        )
        st.plotly_chart(eq, key="sweep_equity")
    if not choices.empty:
        shown = choices[["window_index", "trading_start", "trading_end", "label"]].copy()
        shown["in-sample Sharpe"] = choices["in_sample_sharpe"].map("{:.2f}".format)
        shown["OOS return"] = choices["oos_return"].map("{:+.2%}".format)
        st.dataframe(
            shown.rename(columns={"window_index": "window", "label": "chosen set"}),
            hide_index=True,
            key="sweep_windows",
        )


def _scan_folders(results_dir: Path) -> list[Path]:
    """Finished scans (results/scan-*/ with a summary.json), newest first: by their UTC stamp,
    then the -2, -3 suffix of a second scan in the same second (as `scan --adopt` reads them)."""
    if not results_dir.is_dir():
        return []

    def order(folder: Path) -> tuple[str, int]:
        parts = folder.name[len(SCAN_PREFIX) :].split("-")
        return ("-".join(parts[:2]), int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1)

    scans = [
        d
        for d in results_dir.iterdir()
        if d.is_dir() and d.name.startswith(SCAN_PREFIX) and (d / "summary.json").is_file()
    ]
    return sorted(scans, key=order, reverse=True)


@st.cache_data(max_entries=8, show_spinner=False)
def _read_scan(
    folder: str, summary_stat: tuple[int, int], pairs_stat: tuple[int, int], parquet: bool
) -> tuple[dict[str, Any], pd.DataFrame]:
    """summary.json and the ranked pairs (pairs.parquet, else pairs.csv) of one scan; the stats
    are the cache key."""
    summary = json.loads((Path(folder) / "summary.json").read_text(encoding="utf-8"))
    if parquet:
        table = pd.read_parquet(Path(folder) / "pairs.parquet")
    else:
        table = pd.read_csv(Path(folder) / "pairs.csv")
    return summary, table.sort_values("rank", kind="stable").reset_index(drop=True)


def _scan_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The scan's table as `main.py scan` prints it: Sharpe annualised, PSR and DSR as
    probabilities, total return in %, cost in bps of traded notional, half-life in bars."""

    def ci(low: Any, high: Any) -> str:
        ok = all(isinstance(v, int | float) and math.isfinite(v) for v in (low, high))
        return f"{low:.2f} .. {high:.2f}" if ok else "—"

    return pd.DataFrame(
        {
            "#": table["rank"],
            "pair": table["pair"],
            "OOS Sharpe": table["sharpe"],
            "95 % CI": [
                ci(lo, hi)
                for lo, hi in zip(table["sharpe_ci_low"], table["sharpe_ci_high"], strict=True)
            ],
            "PSR": table["psr"],
            "DSR": table["dsr"],
            "total return %": 100 * table["total_return"],
            "trades": table["fills"],
            "cost bps": 1e4 * table["cost_share"],
            "half-life": table["median_half_life_bars"],
            "coint %": 100 * table["share_cointegrated"],
        }
    )


def _scan_heatmap(table: pd.DataFrame, tickers: Sequence[str], title: str) -> Any:
    """Ticker x ticker OOS Sharpe from the ranked table (symmetric; the best-ranked row of a pair
    wins when it was tried with several parameter sets), as pair_scan's heatmap.html."""
    import numpy as np
    import plotly.graph_objects as go

    names = list(tickers) or sorted(set(table["long"]) | set(table["short"]))
    m = pd.DataFrame(np.nan, index=names, columns=names)
    for long, short, sharpe in reversed(
        list(zip(table["long"], table["short"], table["sharpe"], strict=True))
    ):
        if long in m.index and short in m.index:
            m.loc[long, short] = m.loc[short, long] = sharpe
    values = m.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    lim = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-9)
    cells = [[float(v) if math.isfinite(v) else None for v in row] for row in values]
    fig = go.Figure(
        go.Heatmap(
            z=cells,  # plain lists (None: no pair), readable in the page's JSON
            x=names,
            y=names,
            colorscale="RdYlGn",
            zmin=-lim,
            zmax=lim,
            colorbar={"title": "OOS Sharpe"},
        )
    )
    side = max(320, 22 * len(names) + 120)
    fig.update_layout(
        title=title,
        height=side,
        yaxis={"autorange": "reversed"},
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
    )
    return fig


def panel_scan(home: C.Paths, pair: C.Pair) -> None:
    """The latest `main.py scan` (or a chosen one): its headline, the best pairs ranked by
    deflated Sharpe, and the universe's out-of-sample Sharpe heatmap."""
    scans = _scan_folders(home.results_dir)
    if not scans:
        st.info(
            "No scan yet: run `python main.py scan` to rank every pair of the universe out of "
            "sample (results/scan-<stamp>/)"
        )
        return
    folder = scans[0]
    if len(scans) > 1:
        choice = st.selectbox("Scan (newest first)", [d.name for d in scans], key="scan_run")
        folder = home.results_dir / str(choice)
    parquet = _stat(folder / "pairs.parquet")
    pairs_stat = parquet or _stat(folder / "pairs.csv")
    summary_stat = _stat(folder / "summary.json")
    if pairs_stat is None or summary_stat is None:
        st.error(f"{folder} has no pairs.parquet or pairs.csv: the scan is incomplete")
        return
    summary, table = _read_scan(str(folder), summary_stat, pairs_stat, parquet is not None)
    run = summary.get("run") or {}
    trials = summary.get("trials") or {}
    st.caption(
        f"{folder.name} · universe {run.get('universe')} · {len(run.get('tickers') or [])} "
        f"tickers, {run.get('pairs')} pairs · {run.get('windows')} walk-forward windows "
        f"({run.get('formation_bars')} + {run.get('trading_bars')} bars) · out of sample "
        f"{run.get('oos_start')}..{run.get('oos_end')} · DSR "
        f"{deflated_over(int(trials.get('count') or 0), trials.get('as_of'))} (scan trials)"
    )
    rows = _scan_rows(table)
    traded = rows[
        rows["pair"].str.upper().isin((f"{pair.long}/{pair.short}", f"{pair.short}/{pair.long}"))
    ]
    if traded.empty:
        st.caption(
            f"The traded pair {pair.long}/{pair.short} is not in this scan; "
            "`python main.py scan --adopt LONG/SHORT` trades one of these."
        )
    else:
        st.caption(
            f"The traded pair {pair.long}/{pair.short} is #{int(traded['#'].iloc[0])} of "
            f"{len(rows)} here; `python main.py scan --adopt LONG/SHORT` trades another."
        )
    st.dataframe(
        rows.head(SCAN_TOP_ROWS),
        hide_index=True,
        column_config={
            "OOS Sharpe": st.column_config.NumberColumn(format="%.2f"),
            "PSR": st.column_config.NumberColumn(format="%.3f"),
            "DSR": st.column_config.NumberColumn(format="%.3f"),
            "total return %": st.column_config.NumberColumn(format="%+.1f"),
            "cost bps": st.column_config.NumberColumn(format="%.1f"),
            "half-life": st.column_config.NumberColumn(format="%.1f"),
            "coint %": st.column_config.NumberColumn(format="%.0f"),
        },
    )
    if len(rows) > SCAN_TOP_ROWS:
        st.caption(f"The best {SCAN_TOP_ROWS} of {len(rows):,} (all in {folder.name}/pairs.csv).")
    title = f"OOS Sharpe by pair, {run.get('oos_start')} .. {run.get('oos_end')}"
    st.plotly_chart(_scan_heatmap(table, run.get("tickers") or [], title), key="scan_heatmap")


def panel_alerts(home: C.Paths, pair: C.Pair) -> None:
    """alerts.log newest first, filtered by severity (the last TAIL_BYTES of the file)."""
    stat = _stat(home.alerts_log)
    if stat is None:
        st.info(
            "No alerts yet: the live loop, training and risk checks write logs/alerts.log; "
            "`python main.py alerts test` writes a test alert"
        )
        return
    alerts, skipped, cut = _read_alerts(str(home.alerts_log), *stat)
    if skipped and alerts.empty:
        st.error(f"{home.alerts_log} is unreadable: none of its {skipped:,} line(s) is an alert")
        return
    if skipped:
        st.warning(f"Skipped {skipped:,} unreadable line(s) in {home.alerts_log.name}")
    chosen = st.multiselect(
        "Severity", list(SEVERITIES), default=list(SEVERITIES), key="alert_severity"
    )
    shown = alerts[alerts["severity"].isin(chosen)]
    counts = alerts["severity"].value_counts()
    st.caption(
        " · ".join(f"{s} {int(counts.get(s, 0)):,}" for s in SEVERITIES)
        + (f" (last {TAIL_BYTES // 2**20} MB of a {stat[1] / 2**20:,.1f} MB file)" if cut else "")
    )
    if shown.empty:
        st.caption("No alert of the chosen severities.")
        return
    st.dataframe(shown.head(MAX_ALERT_ROWS), hide_index=True)
    if len(shown) > MAX_ALERT_ROWS:
        st.caption(f"Showing the newest {MAX_ALERT_ROWS:,} of {len(shown):,}.")


def panel_models(home: C.Paths, pair: C.Pair) -> None:
    """The model registry: versions, kinds, statuses, holdout metrics and artifact integrity."""
    index = home.models_dir / "registry.json"
    stat = _stat(index)
    if stat is None:
        st.info("No models yet: run `python main.py train` to create models/registry.json")
        return
    artifacts = tuple(
        (str(p.relative_to(home.models_dir)), _stat(p))
        for p in sorted(home.models_dir.glob("*/*"))
        if p.is_file()
    )
    models = _read_registry(str(home.models_dir), (stat, artifacts))
    if models.empty:
        st.info("The registry is empty: run `python main.py train`")
        return
    st.dataframe(
        models,
        hide_index=True,
        column_config={
            k: st.column_config.NumberColumn(format="%.3f")
            for k in ("holdout accuracy", "holdout ROC AUC", "holdout log loss")
        },
    )
    bad = models[models["integrity"] != "ok"]
    if bad.empty:
        st.caption(f"All {len(models)} model(s) match their recorded SHA-256 digests.")
    else:
        st.error(
            f"{len(bad)} model(s) fail the integrity check: "
            + "; ".join(f"{v} ({i})" for v, i in zip(bad["version"], bad["integrity"], strict=True))
        )


def panel_audit(home: C.Paths, pair: C.Pair) -> None:
    """The audit log's hash chain verdict and its last records."""
    stat = _stat(home.audit_log)
    if stat is None:
        st.info(f"No audit log yet: {LIVE_HINT} to create logs/audit.jsonl")
        return
    ok, count, verdict = _verify_audit(str(home.audit_log), *stat)
    if ok:
        st.success(f"verified: {count:,} records, hash chain intact")
    else:
        st.error(verdict)
    recent = _audit_tail(home)[-15:][::-1]
    if recent:
        st.dataframe(
            pd.DataFrame(
                {
                    "seq": [r.get("seq") for r in recent],
                    "time": [r.get("time") for r in recent],
                    "event": [r.get("event") for r in recent],
                    "payload": [json.dumps(r["payload"], sort_keys=True)[:200] for r in recent],
                }
            ),
            hide_index=True,
        )


PANELS: tuple[tuple[str, Callable[[C.Paths, C.Pair], None]], ...] = (
    ("Live status", panel_live_status),
    ("Positions and equity", panel_positions),
    ("Prices and spread", panel_prices),
    ("Backtest results", panel_backtests),
    ("Pair scan", panel_scan),
    ("Parameter sweeps", panel_sweeps),
    ("Alerts", panel_alerts),
    ("Model registry", panel_models),
    ("Audit log", panel_audit),
)


def _render(
    title: str, panel: Callable[[C.Paths, C.Pair], None], home: C.Paths, pair: C.Pair
) -> None:
    """One panel under its header; any failure is one error line here and the rest still draws."""
    st.header(title, divider="gray")
    try:
        panel(home, pair)
    except Exception as exc:  # a corrupt file must not take the other panels down
        st.error(f"{title}: {_one_line(exc)}")


def _body(home: C.Paths, pair: C.Pair) -> None:
    for title, panel in PANELS:
        _render(title, panel, home, pair)
    st.caption(f"Read at {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M:%S} UTC")


def _refresh_default() -> float:
    raw = os.environ.get(ENV_REFRESH_S)
    try:
        value = float(raw) if raw else DEFAULT_REFRESH_S
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        st.sidebar.warning(
            f"{ENV_REFRESH_S}={raw!r} is not a number of seconds >= 0; using {DEFAULT_REFRESH_S:g}"
        )
        return DEFAULT_REFRESH_S
    return value


def main() -> None:
    st.set_page_config(page_title="Pair trading dashboard", page_icon="📈", layout="wide")
    _load_env_file()
    home = C.paths()
    try:
        pair = C.resolve_pair()
    except Exception as exc:
        st.error(f"Pair: {_one_line(exc)} (check TICKER_LONG / TICKER_SHORT)")
        return
    refresh_s = float(
        st.sidebar.number_input(
            "Refresh every (s, 0 = off)",
            min_value=0.0,
            max_value=86_400.0,
            value=_refresh_default(),
            step=5.0,
            format="%.0f",
            key="refresh_s",
        )
    )
    st.sidebar.caption(f"TRADING_HOME: `{home.home}`")
    st.sidebar.caption(f"Pair: {pair.long}/{pair.short} (TICKER_LONG / TICKER_SHORT)")
    st.sidebar.caption("Read-only: this page never changes a file.")
    st.title(f"Pair trading · {pair.long} / {pair.short}")
    run_every = timedelta(seconds=refresh_s) if refresh_s > 0 else None
    st.fragment(run_every=run_every)(_body)(home, pair)


main()
