"""BigQuery Storage Write API client side, without Beam: append protobuf rows, commit streams.

``Appender`` sends rows to one write stream: requests of at most ``MAX_REQUEST_BYTES`` (BigQuery's
quotas page gives 10 MB per AppendRows request; google-cloud-bigquery-storage 2.43 documents
20 MB), pipelined on one AppendRows connection per call. Every request names its stream and carries the
writer schema: BigQuery needs both only on a connection's first request and accepts them on any
(the schema is "provided whenever the input schema changes"), while bqemulator 1.4 forgets the
stream after the first request and the schema after a first request it refused, then fails
every later request of the connection. What comes back decides each request's fate:

* stored: counted;
* ``row_errors``: BigQuery refused those rows and stored none of the request; the listed rows
  become rejections, the others are sent again;
* INVALID_ARGUMENT without row errors (a request judged as a whole: a schema mismatch, or the
  local server, which never reports rows): the request is split in halves until the offending
  rows stand alone, so one bad row costs log2(n) extra requests and never the good rows;
* transient (UNAVAILABLE, INTERNAL, ABORTED, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, CANCELLED):
  sent again with capped exponential backoff for as long as it lasts — an outage delays rows;
* a connection dying with UNKNOWN (the server raised something unexpected): sent again up to
  ``UNKNOWN_RETRIES`` times per ``append``, then taken as a judgement of the request (split);
* anything else (missing table, permission denied): every row of the request is rejected with
  the server's reason.

On the ``_default`` stream a request whose answer was lost is sent again and may be stored twice
(at-least-once; the ``*_unique`` views hide the copy). With offsets (PENDING streams) BigQuery
stores a given offset once: a resent request answers ALREADY_EXISTS, which counts as stored.

``PendingStream`` and ``commit_streams`` are the bounded writer: rows go to PENDING streams that
stay invisible until ``BatchCommitWriteStreams`` makes all streams of a table visible at once.
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry, if_exception_type

_LOGGER = logging.getLogger(__name__)

STORAGE_EMULATOR_ENV = "BIGQUERY_STORAGE_EMULATOR_HOST"
REST_EMULATOR_ENV = "BIGQUERY_EMULATOR_HOST"
MAX_REQUEST_BYTES = 9 << 20  # under the 10 MB limit, with room for the request envelope
MAX_ROWS_PER_REQUEST = 5_000
MAX_REQUESTS_PER_CONNECTION = 20  # bounds one connection's work well inside its timeout
ROW_FRAMING_BYTES = 6  # field tag + length prefix of one serialized row inside the request
CONNECTION_TIMEOUT_SECONDS = 300.0
RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "ABORTED", "RESOURCE_EXHAUSTED",
                             "DEADLINE_EXCEEDED", "CANCELLED"})
TRANSIENT_ERRORS = (api_exceptions.ServiceUnavailable, api_exceptions.InternalServerError,
                    api_exceptions.Aborted, api_exceptions.ResourceExhausted,
                    api_exceptions.DeadlineExceeded, api_exceptions.Cancelled)
# A connection that died with these codes condemns the request it was on, not the ones after it.
RESENDABLE_CODES = TRANSIENT_CODES | {"INVALID_ARGUMENT", "UNKNOWN"}
UNKNOWN_RETRIES = 5  # ~15 s of backoff before UNKNOWN counts as a verdict on the request


def storage_emulator_host() -> str | None:
    """``host:port`` of a local Storage Write API server, or None for Google's.

    A local REST endpoint without a local gRPC one is refused: the writer would otherwise try
    Google's servers with whatever credentials the machine has.
    """
    host = os.environ.get(STORAGE_EMULATOR_ENV)
    if not host and os.environ.get(REST_EMULATOR_ENV):
        raise RuntimeError(f"{REST_EMULATOR_ENV} points at a local BigQuery but {STORAGE_EMULATOR_ENV} "
                           "is not set, so the Storage Write API writer would go to Google: set it to "
                           "the local server's gRPC host:port, or pass "
                           "--bigquery_write_method=STREAMING_INSERTS")
    return host or None


def make_write_client(emulator_host: str | None = None) -> Any:
    """A BigQueryWriteClient: Google's endpoint with default credentials, or a local server over
    plaintext gRPC, anonymously."""
    from google.cloud.bigquery_storage_v1 import BigQueryWriteClient

    if emulator_host is None:
        return BigQueryWriteClient()
    import grpc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.bigquery_storage_v1.services.big_query_write.transports.grpc import (
        BigQueryWriteGrpcTransport)

    return BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(
        channel=grpc.insecure_channel(emulator_host), credentials=AnonymousCredentials()))


def table_path(project: str, dataset: str, table: str) -> str:
    return f"projects/{project}/datasets/{dataset}/tables/{table}"


def _log_retry(exc: Exception) -> None:
    _LOGGER.warning("BigQuery Storage Write API call failed, retrying with backoff: %s", exc)


# Unary calls (create, finalize, commit): transient errors retried for as long as they last.
UNARY_RETRY = Retry(predicate=if_exception_type(*TRANSIENT_ERRORS), initial=RETRY_INITIAL_SECONDS,
                    maximum=RETRY_MAX_SECONDS, timeout=None, on_error=_log_retry)


@dataclass
class Rejected:
    """A row BigQuery will not store, with the reason (and the server's error entries)."""

    row: Any
    reason: str
    errors: list[dict[str, Any]] = field(default_factory=list)


Batch = list[tuple[Any, bytes]]  # (the caller's row, its serialized proto)


def _requests(items: Sequence[tuple[Any, bytes]]) -> Iterable[Batch]:
    """Consecutive batches within the request limits."""
    batch: Batch = []
    size = 0
    for item in items:
        item_size = len(item[1]) + ROW_FRAMING_BYTES
        if batch and (len(batch) >= MAX_ROWS_PER_REQUEST or size + item_size > MAX_REQUEST_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch


class Appender:
    """Appends serialized rows to one write stream; see the module docstring for what happens to
    each request. ``append`` returns the rows that cannot be stored; it blocks while BigQuery is
    unreachable."""

    def __init__(self, client: Any, stream: str, descriptor: Any, offsets: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self.stream = stream
        self._descriptor = descriptor
        self._offsets = offsets
        self._sleep = sleep
        self.next_offset = 0
        self.rows_stored = 0
        self.bytes_stored = 0
        self.retries = 0

    def append(self, items: Sequence[tuple[Any, bytes]]) -> list[Rejected]:
        rejected: list[Rejected] = []
        pending = deque(_requests(items))
        transient_rounds, unknown_left = 0, UNKNOWN_RETRIES
        while pending:
            batches = [pending.popleft() for _ in range(min(len(pending), MAX_REQUESTS_PER_CONNECTION))]
            verdicts = self._round(batches, pending, rejected, unknown_left > 0)
            if verdicts & {"transient", "unknown"}:
                self.retries += 1
                self._sleep(min(RETRY_MAX_SECONDS, RETRY_INITIAL_SECONDS * 2 ** transient_rounds))
                transient_rounds += 1
                unknown_left -= "unknown" in verdicts
            else:
                transient_rounds = 0
        return rejected

    def _round(self, batches: list[Batch], pending: deque, rejected: list[Rejected],
               unknown_is_transient: bool) -> set[str]:
        """Sends ``batches`` on one connection; puts back in ``pending`` (in order, ahead of what
        was not sent yet) what must be sent again. Returns the verdicts given."""
        responses, error = self._send(batches)
        again: deque = deque()
        verdicts: set[str] = set()
        failed = False
        for index, batch in enumerate(batches):
            if failed and self._offsets:  # an offset after a gap is refused: send again
                again.append(batch)
                continue
            if index < len(responses):
                verdict = self._judge_response(batch, responses[index], again, rejected)
            elif index == len(responses) or _code(error) not in RESENDABLE_CODES:
                verdict = self._judge_error(batch, error, again, rejected, unknown_is_transient)
            else:  # never reached the server's judgement: send again
                again.append(batch)
                verdict = "again"
            verdicts.add(verdict)
            failed |= verdict != "stored"
        pending.extendleft(reversed(again))
        return verdicts

    def _send(self, batches: list[Batch]) -> tuple[list[Any], Exception | None]:
        from google.cloud.bigquery_storage_v1 import types

        requests = []
        offset = self.next_offset
        for batch in batches:
            request = types.AppendRowsRequest.pb()(write_stream=self.stream)
            request.proto_rows.rows.serialized_rows.extend(data for _, data in batch)
            request.proto_rows.writer_schema.proto_descriptor.CopyFrom(self._descriptor)
            if self._offsets:
                request.offset.value = offset
                offset += len(batch)
            requests.append(types.AppendRowsRequest.wrap(request))
        responses: list[Any] = []
        try:
            for response in self._client.append_rows(
                    requests=iter(requests), timeout=CONNECTION_TIMEOUT_SECONDS,
                    metadata=(("x-goog-request-params", f"write_stream={self.stream}"),)):
                responses.append(response)
        except api_exceptions.GoogleAPICallError as exc:
            return responses, exc
        if len(responses) < len(requests):
            return responses, api_exceptions.ServiceUnavailable(
                f"AppendRows connection closed after {len(responses)} of {len(requests)} answers")
        return responses, None

    def _stored(self, batch: Batch) -> str:
        self.rows_stored += len(batch)
        self.bytes_stored += sum(len(data) for _, data in batch)
        self.next_offset += len(batch)
        return "stored"

    def _judge_response(self, batch: Batch, response: Any, pending: deque,
                        rejected: list[Rejected]) -> str:
        from google.cloud.bigquery_storage_v1 import types

        if "error" not in response or not response.error.code:
            return self._stored(batch)
        code = _status_name(response.error.code)
        if response.row_errors:
            bad = {e.index: e for e in response.row_errors}
            for index, error in bad.items():
                name = types.RowError.RowErrorCode(error.code).name
                rejected.append(Rejected(batch[index][0], f"{name}: {error.message}",
                                         [{"reason": name, "message": error.message}]))
            rest = [item for index, item in enumerate(batch) if index not in bad]
            if rest:
                pending.append(rest)
            return "rejected"
        if code == "ALREADY_EXISTS" and self._offsets:  # stored before; its answer was lost
            return self._stored(batch)
        if code in TRANSIENT_CODES:
            _LOGGER.warning("AppendRows on %s answered %s (%s); sending again", self.stream, code,
                            response.error.message)
            pending.append(batch)
            return "transient"
        if code == "INVALID_ARGUMENT":
            return self._split(batch, f"{code}: {response.error.message}", pending, rejected)
        return self._reject(batch, f"{code}: {response.error.message}", rejected)

    def _judge_error(self, batch: Batch, error: Exception | None, pending: deque,
                     rejected: list[Rejected], unknown_is_transient: bool) -> str:
        code = _code(error)
        if code in TRANSIENT_CODES or (code == "UNKNOWN" and unknown_is_transient):
            _LOGGER.warning("AppendRows connection to %s failed (%s); sending again",
                            self.stream, _error_reason(error))
            pending.append(batch)
            return "unknown" if code == "UNKNOWN" else "transient"
        if code in ("INVALID_ARGUMENT", "UNKNOWN"):  # the server choked on this request
            return self._split(batch, _error_reason(error), pending, rejected)
        return self._reject(batch, _error_reason(error), rejected)

    @staticmethod
    def _split(batch: Batch, reason: str, pending: deque, rejected: list[Rejected]) -> str:
        """Halves go back to be judged apart; a row judged alone is rejected."""
        if len(batch) == 1:
            return Appender._reject(batch, reason, rejected)
        middle = len(batch) // 2
        pending.extend((batch[:middle], batch[middle:]))
        return "split"

    @staticmethod
    def _reject(batch: Batch, reason: str, rejected: list[Rejected]) -> str:
        rejected.extend(Rejected(row, reason) for row, _ in batch)
        return "rejected"


def _status_name(code: int) -> str:
    import grpc

    return next((status.name for status in grpc.StatusCode if status.value[0] == code), str(code))


def _code(error: Exception | None) -> str:
    status = getattr(error, "grpc_status_code", None)
    return status.name if status is not None else "UNKNOWN"


def _error_reason(error: Exception | None) -> str:
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return f"{error.code if error.code is not None else _code(error)} {error.message}"
    return str(error)


class PendingStream:
    """A PENDING write stream on one table: rows appended with offsets stay invisible until
    ``commit_streams``; one that is never committed is dropped by BigQuery, with its rows."""

    def __init__(self, client: Any, table: str, descriptor: Any,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        from google.cloud.bigquery_storage_v1 import types

        self._client = client
        self.table = table
        stream = client.create_write_stream(
            parent=table, write_stream=types.WriteStream(type_=types.WriteStream.Type.PENDING),
            retry=UNARY_RETRY)
        self.appender = Appender(client, stream.name, descriptor, offsets=True, sleep=sleep)

    @property
    def name(self) -> str:
        return self.appender.stream

    def finalize(self) -> int:
        """Seals the stream (no more appends); returns its row count."""
        return int(self._client.finalize_write_stream(name=self.name, retry=UNARY_RETRY).row_count)


class CommitError(RuntimeError):
    """BigQuery refused to commit a table's streams; none of that table's rows became visible."""


def commit_streams(client: Any, streams: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Commits finalized PENDING streams, given as (table path, stream name) pairs: one
    ``BatchCommitWriteStreams`` per table, which BigQuery applies to all of them or none.
    Returns streams committed per table; raises ``CommitError`` on a refusal."""
    from google.cloud.bigquery_storage_v1 import types

    by_table: dict[str, list[str]] = defaultdict(list)
    for table, stream in streams:
        by_table[table].append(stream)
    already = types.StorageError.StorageErrorCode.STREAM_ALREADY_COMMITTED
    for table, names in sorted(by_table.items()):
        response = client.batch_commit_write_streams(
            request=types.BatchCommitWriteStreamsRequest(parent=table, write_streams=names),
            retry=UNARY_RETRY)
        # A stream already committed can only be this commit's own, whose answer was lost.
        errors = [e for e in response.stream_errors if e.code != already]
        if errors:
            raise CommitError(f"BigQuery refused to commit {len(names)} streams of {table}: "
                              + "; ".join(f"{e.entity}: {e.code.name} {e.error_message}"
                                          for e in errors))
    return {table: len(names) for table, names in by_table.items()}
