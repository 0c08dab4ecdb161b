"""Dead-letter rows, and the rule that holds in every step: an element that fails becomes one.

On Dataflow an exception escaping a streaming DoFn retries its bundle forever and stalls the
job; locally it fails the pipeline. So no step lets one escape: a step's own checks route bad
input with a precise reason, and ``dead_letter_on_error`` turns anything unforeseen into a
``dead_letter`` row (stage, exception, the element as payload) on the step's ``dead_letter``
output, which ``MarketData`` writes with the rest. Outputs are buffered per element, so a
failed element emits its dead letter and nothing else, never half its rows.
"""
from __future__ import annotations

import base64
import functools
import json
import logging
from typing import Any, Callable, Iterable, Mapping

from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

DEAD_LETTER_TAG = "dead_letter"
MAX_PAYLOAD_CHARS = 1_000_000  # a BigQuery row stays far below its 10 MB request limit

_LOGGER = logging.getLogger(__name__)


def payload_text(payload: Any) -> str:
    """Any payload as text: bytes as UTF-8 (base64 when they are not text), objects as JSON."""
    if isinstance(payload, bytes):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = "base64:" + base64.b64encode(payload).decode("ascii")
    elif isinstance(payload, str):
        text = payload
    else:
        to_payload = getattr(payload, "dead_letter_payload", None)
        value = to_payload() if callable(to_payload) else payload
        text = json.dumps(value, default=repr, separators=(",", ":"))
    # Lone surrogates (valid JSON escapes, invalid UTF-8) would break the sinks' encoders.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_PAYLOAD_CHARS:
        text = text[:MAX_PAYLOAD_CHARS] + f"…[{len(text) - MAX_PAYLOAD_CHARS} more chars]"
    return text


def dead_letter(stage: str, reason: str, payload: Any, attributes: Mapping[str, Any] | None = None,
                event_time_us: int | None = None) -> dict[str, Any]:
    """A dead_letter row (timestamps as µs; sinks format them)."""
    attributes_json = json.dumps(dict(attributes or {}), sort_keys=True, default=repr)
    return {"stage": stage, "reason": payload_text(reason)[:2000], "payload": payload_text(payload),
            "attributes": attributes_json.encode("utf-8", "backslashreplace").decode("utf-8"),
            "event_time": event_time_us}


def dead_letter_on_error(stage: str) -> Callable[[Callable[..., Iterable[Any] | None]],
                                                 Callable[..., list[Any]]]:
    """Decorates a DoFn's ``process`` (or ``on_timer`` callback, under ``@on_timer``): outputs
    are collected per call; if the call raises, they are dropped and one dead-letter row with
    the exception and the element takes their place on the ``dead_letter`` output."""

    def decorate(method: Callable[..., Iterable[Any] | None]) -> Callable[..., list[Any]]:
        failures = Metrics.counter("dead_letter", f"{stage}_errors")

        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
            try:
                return list(method(self, *args, **kwargs) or ())
            except Exception as error:  # the point: nothing may escape a step
                failures.inc()
                _LOGGER.exception("%s failed on an element; it goes to dead_letter", stage)
                element = args[0] if args else kwargs
                return [TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                    stage, f"{type(error).__name__}: {error}", element))]

        return wrapper

    return decorate
