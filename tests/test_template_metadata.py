"""The Flex Template's metadata.json against MarketDataOptions: same names both ways, same
defaults and choices, and parameter regexes that accept real names and reject near misses.

Dataflow validates template parameters with these regexes before it starts a launcher VM, so a
wrong regex either blocks valid launches or lets a typo cost a failed job minutes later.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from pipelines.options import MarketDataOptions

REPO = Path(__file__).resolve().parent.parent
METADATA = json.loads((REPO / "templates" / "metadata.json").read_text(encoding="utf-8"))
PARAMETERS = {p["name"]: p for p in METADATA["parameters"]}


def _option_actions() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser(add_help=False)
    MarketDataOptions._add_argparse_args(parser)  # the very parser Beam builds the options from
    return {action.dest: action for action in parser._actions}


OPTIONS = _option_actions()


def _matches(name: str, value: str) -> bool:
    return all(re.fullmatch(regex, value) for regex in PARAMETERS[name]["regexes"])


def test_every_option_is_a_template_parameter() -> None:
    assert sorted(set(OPTIONS) - set(PARAMETERS)) == []


def test_every_template_parameter_is_an_option() -> None:
    assert sorted(set(PARAMETERS) - set(OPTIONS)) == []


def test_parameter_names_are_unique() -> None:
    names = [p["name"] for p in METADATA["parameters"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_is_documented_and_validated(name: str) -> None:
    parameter = PARAMETERS[name]
    assert parameter["label"].strip()
    assert len(parameter["helpText"]) > 30
    assert isinstance(parameter["isOptional"], bool)
    assert parameter["regexes"], f"{name} has no validation regex"
    for regex in parameter["regexes"]:
        re.compile(regex)
        assert regex.startswith("^") and regex.endswith("$"), regex


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_defaults_agree_with_options(name: str) -> None:
    action = OPTIONS[name]
    declared = PARAMETERS[name].get("defaultValue")
    if action.default is None:
        assert declared is None
        assert PARAMETERS[name]["isOptional"] is True
        return
    expected = str(action.default).lower() if isinstance(action.default, bool) else str(action.default)
    assert declared == expected
    assert _matches(name, declared), "the default must pass the parameter's own validation"
    assert f"Default: {declared}" in PARAMETERS[name]["helpText"]


@pytest.mark.parametrize("name", sorted(n for n, a in OPTIONS.items() if a.choices))
def test_enum_options_equal_choices(name: str) -> None:
    parameter = PARAMETERS[name]
    assert parameter["paramType"] == "ENUM"
    assert [o["value"] for o in parameter["enumOptions"]] == list(OPTIONS[name].choices)
    for choice in OPTIONS[name].choices:
        assert _matches(name, choice)
    assert not _matches(name, "something_else")


def test_template_is_marked_streaming() -> None:
    assert METADATA["streaming"] is True
    assert METADATA["name"] and METADATA["description"]


GOOD_AND_BAD = {
    "input_subscription": (
        ["projects/my-project/subscriptions/market-ticks-dataflow",
         "projects/quant-research-prod/subscriptions/ticks.btc_usdt~v2",
         "projects/example.com:quant-lab/subscriptions/mds-ticks"],
        ["my-project/subscriptions/ticks",
         "projects/my-project/topics/market-ticks",
         "projects/My-Project/subscriptions/ticks",
         "projects/my-project/subscriptions/goog-ticks",
         "projects/my-project/subscriptions/1ticks",
         "projects/my-project/subscriptions/ab",
         "projects/my-project/subscriptions/ticks/extra",
         "projects/abc/subscriptions/ticks",
         "projects/my-project/subscriptions/ticks\n"]),
    "output_topic": (
        ["projects/my-project/topics/market-candles",
         "projects/quant-research-prod/topics/candles_1m"],
        ["projects/my-project/subscriptions/market-candles",
         "topics/market-candles",
         "projects/my-project/topics/goog-candles",
         "projects/my-project/topics/"]),
    "output_dataset": (
        ["my-project:market_data", "quant-research-prod:Crypto_2024", "example.com:quant-lab:mds"],
        ["market_data", "my-project.market_data", "my-project:market-data", "my-project:",
         ":market_data", "MY-PROJECT:market_data"]),
    "input_file": (
        ["gs://my-bucket/tardis/binance_trades_2024-01-01_BTCUSDT.csv.gz",
         "gs://mds-replay/ticks.jsonl",
         "gs://my-bucket/tardis/binance/trades/2024/01/*/BTCUSDT.csv.gz",
         "gs://my-bucket/a.csv.gz,gs://other-bucket/days/2024-01-0[1-9].csv.gz"],
        ["/tmp/ticks.jsonl", "s3://bucket/ticks.jsonl", "gs://Bad_Bucket/x", "gs://bucket/",
         "gs://b/x", "gs://my-bucket/a.csv,", "gs://my-bucket/a.csv,/tmp/b.csv",
         "gs://my-bucket/a.csv, gs://my-bucket/b.csv"]),
    "start_time": (
        ["2024-01-01", "2024-01-01T00:00:00Z", "2024-01-31T12:30", "2024-01-01T00:00:00.5+00:00"],
        ["2024-1-1", "yesterday", "2024-01-01T", "1704067200", ""]),
    "end_time": (["2024-02-01", "2024-02-01 00:00:00"], ["2024/02/01", "2024-02-01Z"]),
    "output_format": (["jsonl", "parquet"], ["csv", "JSONL", ""]),
    "checkpoint_dir": (["gs://my-bucket/mds-checkpoints/binance", "gs://my-bucket/cp/"],
                       ["/tmp/cp", "gs://my-bucket", "gs://my-bucket/a,b"]),
    "output_dir": (
        ["gs://my-bucket/mds-output"],
        ["out/", "gs://my-bucket"]),
    "timeframes": (
        ["15s,1m,5m,15m,4h,24h", "1m", "30s,1h,1d"],
        ["", "1m,", "1 m", "0s,1m", "1m;5m", "1w", "m1"]),
    "feature_timeframes": (["15s,1m", "5m"], ["15s 1m", "all"]),
    "allowed_lateness_seconds": (["0", "60", "3600"], ["-1", "1.5", "sixty", ""]),
    "early_firing_seconds": (["0", "60"], ["-60", "1e3"]),
    "dedup_retention_seconds": (["3600", "86400"], ["1h", "-5", ""]),
    "idle_timeout_seconds": (["3600"], ["1h"]),
    "max_future_seconds": (["86400"], ["-86400"]),
    "gap_candles": (["true", "false", "True", "0", "1"], ["maybe", "", "truee"]),
    "console": (["false", "TRUE"], ["on"]),
    "mode": (["candles", "ticks", "both"], ["Candles", "ohlcv", "", "ticks,candles"]),
    "bigquery_write_method": (["STORAGE_WRITE_API", "STREAMING_INSERTS"],
                              ["storage_write_api", "FILE_LOADS", "STORAGE_API_AT_LEAST_ONCE", ""]),
}


def test_every_parameter_has_regex_cases() -> None:
    assert sorted(GOOD_AND_BAD) == sorted(PARAMETERS)


@pytest.mark.parametrize("name", sorted(GOOD_AND_BAD))
def test_regexes_accept_good_values(name: str) -> None:
    good, _ = GOOD_AND_BAD[name]
    assert [v for v in good if not _matches(name, v)] == []


@pytest.mark.parametrize("name", sorted(GOOD_AND_BAD))
def test_regexes_reject_bad_values(name: str) -> None:
    _, bad = GOOD_AND_BAD[name]
    assert [v for v in bad if _matches(name, v)] == []


@pytest.mark.parametrize("name", sorted(n for n in GOOD_AND_BAD if n in OPTIONS))
def test_values_the_template_accepts_parse_as_options(name: str) -> None:
    """Whatever passes the template's validation must also parse with the pipeline's own parser."""
    good, _ = GOOD_AND_BAD[name]
    for value in good:
        options = MarketDataOptions([f"--{name}={value}"])
        assert getattr(options, name) is not None


def test_options_doc_is_in_sync_with_metadata() -> None:
    """docs/options.md carries a table rendered from metadata.json (deploy/options_doc.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("options_doc", REPO / "deploy" / "options_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    document = (REPO / "docs" / "options.md").read_text(encoding="utf-8")
    assert module.render_table(METADATA) in document, (
        "docs/options.md is stale: run `python deploy/options_doc.py`")
