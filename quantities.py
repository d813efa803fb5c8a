"""Share quantities: `Qty` and `as_qty`, shared by orders, the ledger and the live state files.

Whole shares are ints and fractional shares floats, end to end; `as_qty` reads a quantity back
(JSON, text, numpy scalars) without changing its kind. Standard library only, so a reader of a
state file (`main.py status`) imports no numpy: numpy's scalar types register with `numbers`.
"""

from __future__ import annotations

import numbers

#: Shares: int (whole shares) or float (fractional shares); signed where a position is meant.
Qty = int | float


def as_qty(value: object) -> Qty:
    """A quantity read back from JSON, numpy or text: whole shares stay int, fractional shares
    stay float (never truncated). TypeError/ValueError for anything that is not a number."""
    kind = type(value)
    if kind is int or kind is float:  # the common case, before the slower ABC checks
        return value  # type: ignore[return-value]
    if isinstance(value, bool):
        raise TypeError(f"a quantity must be a number of shares, not {value!r}")
    if isinstance(value, numbers.Integral):  # int subclasses, numpy integers
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Rational):
        return float(value)  # numpy floats
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            return float(text)
    raise TypeError(f"a quantity must be a number of shares, not {value!r}")


__all__ = ["Qty", "as_qty"]
