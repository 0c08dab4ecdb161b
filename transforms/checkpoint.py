"""Series checkpoints: how a streaming job continues the series a backfill ended.

A backfill up to T and a stream from T must read as ONE series: no restart at T (``is_partial``),
gap candles across it, and features that go on as if one job had seen everything. Moving
averages, EMAs, RSI and MACD depend on the whole past, not on the last rows a view could give
back, so the backfill writes what the streaming sequencer itself keeps per (exchange, symbol,
timeframe): the last candles, each with the feature state before it, the state after the last
one, where the series goes on and when it last traded (``SeriesState``). A bounded run with
``--end_time`` and ``--checkpoint_dir`` writes one JSON file per series; a streaming job given
the same ``--checkpoint_dir`` installs them before its first candle (``SequenceCandlesFn``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.feature_state import FeatureState, initial_state, step
from transforms.candle_series import SeriesEntry, SeriesState

FILE_SUFFIX = ".series.json"
VERSION = 1
SeriesKey = tuple[str, str, str]


@dataclasses.dataclass
class SeriesCheckpoint:
    """A series as the end of a bounded run left it (what the streaming job continues)."""

    key: SeriesKey
    state: SeriesState


def _state_json(state: Optional[FeatureState]) -> Optional[dict[str, Any]]:
    return None if state is None else dataclasses.asdict(state)


def _state_from_json(data: Optional[dict[str, Any]]) -> Optional[FeatureState]:
    if data is None:
        return None
    return FeatureState(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def history_entry(row: dict[str, Any], state_before: Optional[FeatureState]) -> SeriesEntry:
    """A sequencer history entry from an output row. Whether the feed was unchecked after it is
    read back from the row's flags: nothing counted missing yet not complete. A series' first
    candle reads so too, which only makes the gap candles after it incomplete: never the
    reverse."""
    unchecked = row.get("missing_trades") == 0 and row.get("is_complete") is False
    return SeriesEntry(row, state_before, 0, feed_unknown=unchecked,
                       made_gap=bool(row.get("is_gap")) and not row.get("is_partial"))


def checkpoint_of_series(key: SeriesKey, rows: list[dict[str, Any]], timeframe_seconds: int,
                         with_features: bool, history_limit: int) -> Optional[SeriesCheckpoint]:
    """The state the streaming sequencer would hold after ``rows`` (one whole series, in order).

    The feature state is rebuilt with the incremental ``step`` over the whole series,
    which agrees with the vectorised batch features the rows carry.
    """
    if not rows:
        return None
    feature_state = initial_state() if with_features else None
    history: list[SeriesEntry] = []
    for row in rows:
        before = feature_state
        if feature_state is not None:
            feature_state, _ = step(feature_state, row, float(timeframe_seconds))
        history.append(history_entry(row, before))
        del history[:-history_limit]
    last_trade = max((r["last_tick_time"] for r in rows if r["last_tick_time"] is not None),
                     default=rows[0]["timestamp_in"])
    state = SeriesState(next_start_us=rows[-1]["window_end"], last_trade_us=last_trade,
                        history=history, feature_state=feature_state)
    return SeriesCheckpoint(key, state)


def to_json(checkpoint: SeriesCheckpoint) -> str:
    state = checkpoint.state
    return json.dumps({
        "version": VERSION, "key": list(checkpoint.key), "next_start_us": state.next_start_us,
        "last_trade_us": state.last_trade_us, "feature_state": _state_json(state.feature_state),
        "history": [{"row": e.row, "state_before": _state_json(e.state_before)} for e in state.history],
    })


def from_json(text: str) -> SeriesCheckpoint:
    data = json.loads(text)
    if data.get("version") != VERSION:
        raise ValueError(f"series checkpoint version {data.get('version')!r}, expected {VERSION}")
    history = [history_entry({k: (None if isinstance(v, float) and math.isnan(v) else v)
                              for k, v in e["row"].items()}, _state_from_json(e["state_before"]))
               for e in data["history"]]
    return SeriesCheckpoint(tuple(data["key"]), SeriesState(
        data["next_start_us"], data["last_trade_us"], history, _state_from_json(data["feature_state"])))


def checkpoint_path(directory: str, key: SeriesKey) -> str:
    name = "_".join(part.replace("/", "-").replace("_", "-") for part in key)
    return FileSystems.join(directory, name + FILE_SUFFIX)


def read_checkpoints(directory: str) -> list[tuple[SeriesKey, SeriesCheckpoint]]:
    """Every checkpoint under ``directory`` (local or gs://), keyed by series."""
    [match] = FileSystems.match([FileSystems.join(directory, "*" + FILE_SUFFIX)])
    found = []
    for metadata in match.metadata_list:
        with FileSystems.open(metadata.path) as handle:
            checkpoint = from_json(handle.read().decode("utf-8"))
        found.append((checkpoint.key, checkpoint))
    return found


class WriteCheckpointFn(beam.DoFn):
    """One file per series, replaced whole (a re-run of the backfill rewrites it)."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def process(self, checkpoint: SeriesCheckpoint) -> Iterator[str]:
        path = checkpoint_path(self._directory, checkpoint.key)
        with FileSystems.create(path) as handle:
            handle.write(to_json(checkpoint).encode("utf-8"))
        yield path
