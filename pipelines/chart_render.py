"""Drawing candles: a PNG through matplotlib, or one self-contained HTML file with inline SVG (no
scripts, no network) that opens anywhere."""
from __future__ import annotations

import html
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipelines.candle_rows import parse_utc
from transforms.features import FEATURE_NAMES
from transforms.sinks import format_price

CHARTABLE_COLUMNS = FEATURE_NAMES + ("vwap",)


def _feature_series(candles: Sequence[Mapping[str, Any]], name: str) -> list[float | None]:
    values = []
    for row in candles:
        value = row.get(name)
        values.append(None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value))
    return values


def render_png(candles: Sequence[Mapping[str, Any]], features: Sequence[str], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    times = [parse_utc(r["timestamp_in"]) for r in candles]
    width_days = ((parse_utc(candles[0]["window_end"]) - times[0]).total_seconds() / 86400) * 0.7
    figure, (price_axis, volume_axis) = plt.subplots(
        2, 1, sharex=True, figsize=(12, 7), gridspec_kw={"height_ratios": [3, 1]})
    for when, row in zip(times, candles):
        x = mdates.date2num(when)
        opening, closing = float(row["open"]), float(row["close"])
        color = "#9e9e9e" if row.get("is_gap") else ("#26a69a" if closing >= opening else "#ef5350")
        price_axis.vlines(x, float(row["low"]), float(row["high"]), color=color, linewidth=0.8)
        body = max(abs(closing - opening), 1e-12)
        price_axis.bar(x, body, width_days, bottom=min(opening, closing), color=color, edgecolor=color)
        volume_axis.bar(x, float(row.get("volume") or 0.0), width_days, color=color)
    for name in features:
        values = _feature_series(candles, name)
        points = [(mdates.date2num(t), v) for t, v in zip(times, values) if v is not None]
        if points:
            xs, ys = zip(*points)
            price_axis.plot(xs, ys, linewidth=1.2, label=name)
        else:
            print(f"note: {name} has no values in this range (not enough history yet)", file=sys.stderr)
    if features:
        price_axis.legend(loc="upper left", fontsize=8)
    price_axis.set_title(title)
    price_axis.set_ylabel("price")
    volume_axis.set_ylabel("volume")
    price_axis.grid(alpha=0.2)
    volume_axis.grid(alpha=0.2)
    volume_axis.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


SVG_WIDTH, PRICE_HEIGHT, VOLUME_HEIGHT, MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP = 1100, 420, 120, 70, 20, 30
LINE_COLORS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def render_html(candles: Sequence[Mapping[str, Any]], features: Sequence[str], title: str, out: Path) -> None:
    """One self-contained HTML file (inline SVG, no scripts or network): opens anywhere."""
    lows = [float(r["low"]) for r in candles]
    highs = [float(r["high"]) for r in candles]
    overlay = {name: _feature_series(candles, name) for name in features}
    levels = lows + highs + [v for values in overlay.values() for v in values if v is not None]
    low, high = min(levels), max(levels)
    span = (high - low) or max(abs(high) * 1e-3, 1e-9)
    top_volume = max(float(r.get("volume") or 0.0) for r in candles) or 1.0
    plot_width = SVG_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    step = plot_width / len(candles)
    body_width = max(step * 0.7, 1.0)
    volume_top = MARGIN_TOP + PRICE_HEIGHT + 20

    def y_price(value: float) -> float:
        return MARGIN_TOP + (high - value) / span * PRICE_HEIGHT

    parts = []
    for i in range(5):  # price grid and labels
        level = low + span * i / 4
        y = y_price(level)
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{SVG_WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'class="grid"/><text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" class="axis" '
                     f'text-anchor="end">{format_price(level)}</text>')
    for i, row in enumerate(candles):
        x = MARGIN_LEFT + step * (i + 0.5)
        opening, closing = float(row["open"]), float(row["close"])
        kind = "gap" if row.get("is_gap") else ("up" if closing >= opening else "down")
        volume = float(row.get("volume") or 0.0)
        tooltip = html.escape(f"{parse_utc(row['timestamp_in']).strftime('%Y-%m-%d %H:%M:%S')} UTC  "
                              f"O {format_price(opening)} H {format_price(float(row['high']))} "
                              f"L {format_price(float(row['low']))} C {format_price(closing)}  "
                              f"V {volume:.4f}  trades {int(row.get('trades') or 0)}"
                              + (" (gap)" if row.get("is_gap") else ""))
        body_top = y_price(max(opening, closing))
        body_height = max(abs(y_price(opening) - y_price(closing)), 1.0)
        volume_height = volume / top_volume * VOLUME_HEIGHT
        parts.append(
            f'<g class="{kind}"><title>{tooltip}</title>'
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_price(float(row["high"])):.1f}" '
            f'y2="{y_price(float(row["low"])):.1f}"/>'
            f'<rect x="{x - body_width / 2:.1f}" y="{body_top:.1f}" width="{body_width:.1f}" '
            f'height="{body_height:.1f}"/>'
            f'<rect x="{x - body_width / 2:.1f}" y="{volume_top + VOLUME_HEIGHT - volume_height:.1f}" '
            f'width="{body_width:.1f}" height="{volume_height:.1f}"/></g>')
    legend = []
    for index, (name, values) in enumerate(overlay.items()):
        color = LINE_COLORS[index % len(LINE_COLORS)]
        points = " ".join(f"{MARGIN_LEFT + step * (i + 0.5):.1f},{y_price(v):.1f}"
                          for i, v in enumerate(values) if v is not None)
        if points:
            parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5">'
                         f'<title>{html.escape(name)}</title></polyline>')
        legend.append(f'<span style="color:{color}">━ {html.escape(name)}'
                      f'{"" if points else " (no values yet)"}</span>')
    first, last = parse_utc(candles[0]["timestamp_in"]), parse_utc(candles[-1]["timestamp_in"])
    parts.append(f'<text x="{MARGIN_LEFT}" y="{volume_top + VOLUME_HEIGHT + 18}" class="axis">'
                 f'{first:%Y-%m-%d %H:%M} UTC</text><text x="{SVG_WIDTH - MARGIN_RIGHT}" '
                 f'y="{volume_top + VOLUME_HEIGHT + 18}" class="axis" text-anchor="end">'
                 f'{last:%Y-%m-%d %H:%M} UTC</text><text x="{MARGIN_LEFT - 6}" y="{volume_top + 10}" '
                 f'class="axis" text-anchor="end">vol</text>')
    height = volume_top + VOLUME_HEIGHT + 30
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #222; }}
svg .grid {{ stroke: #e0e0e0; }} svg .axis {{ font-size: 11px; fill: #555; }}
svg .up line, svg .up rect {{ stroke: #26a69a; fill: #26a69a; }}
svg .down line, svg .down rect {{ stroke: #ef5350; fill: #ef5350; }}
svg .gap line, svg .gap rect {{ stroke: #9e9e9e; fill: #9e9e9e; }}
.legend span {{ margin-right: 16px; font-size: 13px; }}
</style></head><body>
<h3>{html.escape(title)}</h3>
<div class="legend">{''.join(legend)}</div>
<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{height}" viewBox="0 0 {SVG_WIDTH} {height}">
{chr(10).join(parts)}
</svg>
<p style="font-size:12px;color:#777">{len(candles)} candles, latest revision of each; grey = gap candle
(no trades). Hover a candle for OHLCV.</p>
</body></html>
"""
    out.write_text(document, encoding="utf-8")
