"""Exact decimal sums of prices and amounts: fixed-point integers at each value's own precision.

Exchanges print prices and quantities as short decimals (0.075, 4261.48); a float sum of them
carries binary noise (2.1890609999999997 where Binance prints 2.189061), and the noise depends on
how ticks were batched, so a day split into two files would not equal the same day in one.
Here each float is read back as the shortest decimal it stands for (its ``repr``), found
vectorised: the fewest decimal places k with ``rint(x·10^k) / 10^k == x``. A column becomes
integers at a common scale, summed exactly (int64 where it provably fits, Python ints beyond),
and a sum is carried as ``(integer, decimals)``; turning it into a float at the end is one
correctly rounded division, so the printed total is the exchange's own decimal.
"""
from __future__ import annotations

import numpy as np

MAX_DECIMALS = 18  # finer than any venue's precision; values finer still are rounded here
_INT64_SAFE = 1 << 62
_FLOAT_EXACT = float(1 << 53)  # below this a double holds every integer exactly
_POWERS = [10.0 ** k for k in range(MAX_DECIMALS + 1)]  # exact doubles up to 10^22


def decimal_places(values: np.ndarray) -> np.ndarray:
    """Per value, the fewest decimal places that write it exactly (MAX_DECIMALS at most)."""
    places = np.full(values.shape, MAX_DECIMALS, dtype=np.int64)
    pending = np.arange(values.size)
    for k, power in enumerate(_POWERS):
        if not pending.size:
            break
        candidates = values[pending]
        with np.errstate(over="ignore", invalid="ignore"):
            fits = np.rint(candidates * power) / power == candidates
        places[pending[fits]] = k
        pending = pending[~fits]
    return places


def to_fixed(values: np.ndarray, decimals_hint: int = 0) -> tuple[np.ndarray | list[int], int, float]:
    """Values as integers at one scale: (integers, decimals, bound) with value = integer /
    10^decimals and every |integer| ≤ bound.

    ``decimals_hint`` (what this market needed before: precision rarely changes) is tried first in
    one vectorised pass; only a batch it does not write exactly pays for ``decimal_places``. The
    scale is then at least the hint, which changes the integers, never the value they stand for.
    int64 when every scaled value fits, else a list of Python ints (huge or mixed magnitudes).
    """
    if not values.size:
        return np.zeros(0, dtype=np.int64), decimals_hint, 0.0
    power = _POWERS[min(decimals_hint, MAX_DECIMALS)]
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.rint(values * power)
        bound = float(np.abs(scaled).max())
        if bound < _FLOAT_EXACT and (scaled / power == values).all():
            return scaled.astype(np.int64), decimals_hint, bound
        places = decimal_places(values)
        own = np.rint(values * np.asarray(_POWERS)[places])  # exact integers at their own scale
        decimals = max(int(places.max()), decimals_hint)
        shift = decimals - places
        bound = float(np.max(np.abs(own) * 10.0 ** shift))
    if bound < _INT64_SAFE:
        return own.astype(np.int64) * 10 ** shift, decimals, bound
    return [int(v) * 10 ** s for v, s in zip(own.tolist(), shift.tolist())], decimals, bound


def batch_sums(price: np.ndarray, amount: np.ndarray, side: np.ndarray, hints: tuple[int, int]
               ) -> tuple[int, int, int, int, int, int]:
    """Exact (volume, quote volume, buy volume, sell volume, amount decimals, price decimals) of
    one batch; ``hints`` = (amount, price) decimals of the market's previous batch. One int64
    reduction per sum when the bounds prove it cannot overflow (the common case)."""
    amounts, amount_decimals, amount_bound = to_fixed(amount, hints[0])
    prices, price_decimals, price_bound = to_fixed(price, hints[1])
    buys, sells = side == 1, side == -1
    if isinstance(amounts, np.ndarray) and amount_bound * amounts.size < _INT64_SAFE:
        volume, buy, sell = int(amounts.sum()), int(amounts[buys].sum()), int(amounts[sells].sum())
    else:
        volume, buy, sell = (exact_sum(take(amounts, mask)) for mask in
                             (np.ones(amount.size, dtype=bool), buys, sells))
    if isinstance(amounts, np.ndarray) and isinstance(prices, np.ndarray) and \
            amount_bound * price_bound * amounts.size < _INT64_SAFE:
        quote = int(np.dot(prices, amounts))
    else:
        quote = exact_dot(prices, amounts)
    return volume, quote, buy, sell, amount_decimals, price_decimals


def exact_sum(integers: np.ndarray | list[int]) -> int:
    """Σ without overflow: int64 halves summed apart when the total could exceed int64."""
    if isinstance(integers, list):
        return sum(integers)
    if not integers.size:
        return 0
    if int(np.abs(integers).max()) * integers.size < _INT64_SAFE:
        return int(integers.sum())
    high, low = integers >> 32, integers & 0xFFFFFFFF  # x = high·2^32 + low, low ≥ 0
    return (int(high.sum()) << 32) + int(low.sum())


def take(integers: np.ndarray | list[int], mask: np.ndarray) -> np.ndarray | list[int]:
    """The integers where ``mask`` is true, whichever form ``to_fixed`` gave them in."""
    if isinstance(integers, np.ndarray):
        return integers[mask]
    return [value for value, keep in zip(integers, mask.tolist()) if keep]


def exact_dot(left: np.ndarray | list[int], right: np.ndarray | list[int]) -> int:
    """Σ left·right exactly (the quote volume of prices and amounts at their scales)."""
    if isinstance(left, np.ndarray) and isinstance(right, np.ndarray) and left.size and \
            int(np.abs(left).max()) * int(np.abs(right).max()) < _INT64_SAFE:
        return exact_sum(left * right)
    left_ints = left.tolist() if isinstance(left, np.ndarray) else left
    right_ints = right.tolist() if isinstance(right, np.ndarray) else right
    return sum(a * b for a, b in zip(left_ints, right_ints))


def rescale(value: int, decimals: int, target: int) -> int:
    """An integer at ``decimals`` expressed at ``target`` ≥ decimals."""
    return value * 10 ** (target - decimals)


def to_float(value: int, decimals: int) -> float:
    """The double nearest to value / 10^decimals (Python's int division rounds correctly)."""
    return value / 10 ** decimals
