"""Reconciliation: our candles against the venues' own candles (klines), field by field.

Plain modules, no Beam: ``klines`` (each venue's kline API: request and answer formats),
``fetch`` (HTTP with pacing, retries and clear errors), ``compare`` (the comparison rows of the
``candle_reconciliation`` table) and ``loopback`` (a local stand-in of a venue's kline API for
the demo and the tests). ``mds reconcile`` (pipelines/reconcile.py) and the streaming step
(transforms/reconcile_candles.py) are built on them.
"""
