"""The trade ids a market has let through, compactly, for dedup by (exchange, symbol, id).

Ids arrive as ``trade_id_keys``: a canonical numeric id is its own non-negative key, any other
id a negative 63-bit hash. Most venues number trades sequentially per market, so numeric keys
are kept as merged intervals: a day of Binance trades is one interval, whatever its size, and
only real gaps cost memory. Hashed keys (UUID venues) are kept one by one. Every interval and
key remembers the newest event time that touched it, so ``forget_before`` bounds the memory to
a retention period.
"""
from __future__ import annotations

import numpy as np

_EMPTY = np.empty(0, dtype=np.int64)


class SeenIds:
    """Plain data with vectorised membership; pickled as a few numpy arrays in Beam state."""

    def __init__(self) -> None:
        self.starts = self.ends = self.interval_newest = _EMPTY  # numeric: sorted, disjoint
        self.hashed = self.hashed_newest = _EMPTY  # hashed: sorted, unique

    def __len__(self) -> int:
        """Intervals plus hashed keys: what the memory grows with."""
        return len(self.starts) + len(self.hashed)

    def unseen(self, keys: np.ndarray) -> np.ndarray:
        """Mask of the keys not seen before and not repeating an earlier key of ``keys``."""
        keep = np.zeros(len(keys), dtype=bool)
        keep[np.unique(keys, return_index=True)[1]] = True
        numeric = keys >= 0
        if len(self.starts) and numeric.any():
            values = keys[numeric]
            at = np.searchsorted(self.starts, values, side="right") - 1
            inside = (at >= 0) & (values <= self.ends[np.maximum(at, 0)])
            keep[np.flatnonzero(numeric)[inside]] = False
        if len(self.hashed) and (~numeric).any():
            keep[np.flatnonzero(~numeric)[np.isin(keys[~numeric], self.hashed)]] = False
        return keep

    def add(self, keys: np.ndarray, ts_us: np.ndarray) -> None:
        """Remember ``keys`` (seen at event times ``ts_us``)."""
        numeric = keys >= 0
        if numeric.any():
            self._add_intervals(keys[numeric], ts_us[numeric])
        if (~numeric).any():
            hashed = np.concatenate([self.hashed, keys[~numeric]])
            newest = np.concatenate([self.hashed_newest, ts_us[~numeric]])
            order = np.lexsort((-newest, hashed))  # per key, the newest first
            hashed, newest = hashed[order], newest[order]
            first = np.r_[True, hashed[1:] != hashed[:-1]]
            self.hashed, self.hashed_newest = hashed[first], newest[first]

    def _add_intervals(self, values: np.ndarray, ts_us: np.ndarray) -> None:
        order = np.argsort(values, kind="stable")
        values, ts_us = values[order], ts_us[order]
        run_start = np.flatnonzero(np.r_[True, np.diff(values) > 1])
        starts = np.concatenate([self.starts, values[run_start]])
        ends = np.concatenate([self.ends, values[np.r_[run_start[1:] - 1, len(values) - 1]]])
        newest = np.concatenate([self.interval_newest, np.maximum.reduceat(ts_us, run_start)])
        order = np.argsort(starts, kind="stable")
        starts, ends, newest = starts[order], ends[order], newest[order]
        reach = np.maximum.accumulate(ends)
        group_start = np.flatnonzero(np.r_[True, starts[1:] > reach[:-1] + 1])
        self.starts = starts[group_start]
        self.ends = np.maximum.reduceat(ends, group_start)
        self.interval_newest = np.maximum.reduceat(newest, group_start)

    def oldest_us(self) -> int | None:
        """The oldest newest-event-time among what is remembered: when forgetting can start."""
        times = np.concatenate([self.interval_newest, self.hashed_newest])
        return int(times.min()) if len(times) else None

    def forget_before(self, cutoff_us: int) -> None:
        """Drop the intervals and keys whose newest event time is before ``cutoff_us``."""
        keep = self.interval_newest >= cutoff_us
        if not keep.all():
            self.starts, self.ends = self.starts[keep], self.ends[keep]
            self.interval_newest = self.interval_newest[keep]
        keep = self.hashed_newest >= cutoff_us
        if not keep.all():
            self.hashed, self.hashed_newest = self.hashed[keep], self.hashed_newest[keep]
