"""The OpenLineage HTTP receiver: ``POST /api/v1/lineage``, as OpenLineage's HttpTransport sends.

A client pointed at Marquez works unchanged. Each request body is one
RunEvent; the answer says what became of it:

* ``201`` once the broker has acknowledged every registry event it became;
* ``200`` for input the registry ignores (a JobEvent, a streaming run ...);
* ``400`` with the reason for invalid input (nothing is published);
* ``401`` without the configured Bearer key;
* ``413`` for a body over the input limit, *after* inflating: ``Content-Encoding:
  gzip`` (HttpTransport's ``compression: gzip``) is inflated in bounded steps, so
  a small body that would inflate to gigabytes costs at most the limit;
* ``415`` for any other content encoding;
* ``503`` while the broker cannot take the events (clients retry; nothing is lost,
  since the translation is deterministic and a repeat is dropped by the worker).

Every refusal is counted on the receiver's own ``/metrics`` and logged, at most
one line per kind of refusal every ten seconds, so no client can flood the log.

The server is waitress: a pure-Python WSGI server in production use for years,
which reads each request whole on its own I/O loop before a worker thread sees
it, so a slow or idle client holds a socket, never a thread, and is dropped after
``channel_timeout``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from pudato_registry import inputs, kafka, logs, openlineage
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection

log = logging.getLogger(__name__)
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
LINEAGE_PATH = "/api/v1/lineage"
_GZIP = frozenset({"gzip", "x-gzip"})


class TooLargeError(Exception):
    """A body that inflates past the input limit."""


def inflate(body: bytes, limit: int) -> bytes:
    """A gzip body inflated, never past ``limit`` bytes: TooLarge beyond, zlib.error if broken."""
    inflater = zlib.decompressobj(wbits=31)  # gzip framing, as HttpTransport sends it
    out = inflater.decompress(body, limit + 1)  # stops there: memory and time stay bounded
    if len(out) > limit:
        raise TooLargeError(f"the body inflates to more than {limit} bytes")
    if not inflater.eof:
        raise zlib.error("the gzip stream is truncated")
    return out


class ReceiverMetrics:
    """The receiver's own series, on its own registry (several receivers may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("pudato_receiver_requests", "Requests answered, by HTTP status",
                                ["code"], registry=r)
        self.refused = Counter("pudato_receiver_refused", "Requests refused, by reason",
                               ["reason"], registry=r)
        self.ignored = Counter("pudato_receiver_ignored",
                               "RunEvents accepted but ignored (200), by kind", ["kind"],
                               registry=r)
        self.published = Counter("pudato_receiver_events_published",
                                 "Registry events the broker acknowledged", registry=r)
        self.unavailable = Counter("pudato_receiver_broker_unavailable",
                                   "Requests answered 503: the broker did not take the events",
                                   registry=r)
        self.decode = Histogram("pudato_receiver_decode_seconds",
                                "Time to inflate, parse and translate one request body",
                                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25, 0.5, 1, 2.5), registry=r)


class Receiver:
    """The WSGI application: translate, publish, answer."""

    def __init__(self, settings: Settings, *, decode: inputs.Decoder | None = None,
                 producer: Producer | None = None, delivery_timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.decode = decode or inputs.decoder(settings.input_format, settings)
        self.producer = producer or kafka.make_producer(settings, **{
            "client.id": "pudato-openlineage-receiver",
            "message.timeout.ms": int(delivery_timeout_s * 1000), "log_level": 2})
        self.delivery_timeout_s = delivery_timeout_s
        key = settings.ol_api_key
        self._expected = None if key is None else f"Bearer {key.get_secret_value()}"
        self._lock = threading.Lock()
        self.counts = {"published": 0, "rejected": 0, "ignored": 0, "unavailable": 0}
        self.metrics = ReceiverMetrics()
        self._sparse = logs.Sparse(log)
        # One thread serves every request's delivery reports, so that a request wakes
        # the moment its own events are acknowledged.
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True,
                                        name="pudato-receiver-deliveries")
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    def close(self, timeout: float = 10.0) -> None:
        """Stop serving delivery reports, after waiting up to ``timeout`` s for the last ones."""
        self.producer.flush(timeout)
        self._stop.set()
        self._poller.join()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request."""
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        if path in ("/healthz", "/readyz"):
            return self._answer(start_response, "200 OK", {"status": "ok"})
        if path == "/metrics":
            body = generate_latest(self.metrics.registry)
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path != LINEAGE_PATH:
            return self._answer(start_response, "404 Not Found", {"error": f"no {path}"})
        if method != "POST":
            return self._answer(start_response, "405 Method Not Allowed",
                                {"error": f"{LINEAGE_PATH} takes POST"})
        return self._lineage(environ, start_response)

    def _lineage(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if self._expected is not None and environ.get("HTTP_AUTHORIZATION") != self._expected:
            return self._refuse(environ, start_response, "401 Unauthorized", "unauthorized",
                                "a valid 'Authorization: Bearer <api key>' is required")
        started = time.perf_counter()
        body = self._body(environ)
        if isinstance(body, tuple):
            return self._refuse(environ, start_response, *body)
        result = self.decode(body)
        self.metrics.decode.observe(time.perf_counter() - started)
        if isinstance(result, Rejection):
            self._count("rejected")
            return self._refuse(environ, start_response, "400 Bad Request", result.kind.value,
                                result.message)
        if isinstance(result, inputs.Ignored):
            self._count("ignored")
            self.metrics.ignored.labels(result.kind).inc()
            return self._answer(start_response, "200 OK", {"ignored": result.reason})
        if not self._publish(result.messages):
            self._count("unavailable")
            self.metrics.unavailable.inc()
            return self._answer(start_response, "503 Service Unavailable",
                                {"error": "the broker did not take the events; try again"},
                                [("Retry-After", "5")])
        self._count("published")
        self.metrics.published.inc(len(result.messages))
        return self._answer(start_response, "201 Created", {"events": len(result.messages)})

    def _body(self, environ: dict[str, Any]) -> bytes | tuple[str, str, str]:
        """The request's RunEvent bytes, inflated; or (status, reason, message) refusing it."""
        limit = openlineage.INPUT_MAX_BYTES
        encoding = str(environ.get("HTTP_CONTENT_ENCODING") or "identity").strip().lower()
        if encoding not in _GZIP and encoding != "identity":
            return ("415 Unsupported Media Type", "unsupported_encoding",
                    f"Content-Encoding {encoding[:40]!r} is not supported; send gzip or none")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return "400 Bad Request", "bad_length", "Content-Length must be a whole number"
        if length > limit:
            return "413 Content Too Large", "too_large", f"a RunEvent is at most {limit} bytes"
        body: bytes = environ["wsgi.input"].read(length)
        if encoding not in _GZIP:
            return body
        try:
            return inflate(body, limit)
        except TooLargeError:
            return ("413 Content Too Large", "too_large",
                    f"a RunEvent is at most {limit} bytes, inflated")
        except zlib.error as exc:
            return ("400 Bad Request", "not_gzip",
                    f"Content-Encoding says gzip, but the body is not: {exc}")

    def _refuse(self, environ: dict[str, Any], start_response: StartResponse, status: str,
                reason: str, message: str) -> list[bytes]:
        """Answer a refusal: counted by reason, logged sparsely (a client may send thousands)."""
        self.metrics.refused.labels(reason).inc()
        self._sparse.warning(reason, "refused a request from %s: %s %s: %s",
                             environ.get("REMOTE_ADDR", "?"), status, reason, message[:300])
        return self._answer(start_response, status, {"error": reason, "reason": message})

    def _answer(self, start_response: StartResponse, status: str, body: dict[str, Any],
                headers: list[tuple[str, str]] | None = None) -> list[bytes]:
        self.metrics.requests.labels(status.split(" ", 1)[0]).inc()
        return _answer(start_response, status, body, headers)

    def _publish(self, messages: list[tuple[bytes, bytes]]) -> bool:
        """Produce and wait for this request's acknowledgements only; False if any failed."""
        waiting = len(messages)
        failed: list[KafkaError] = []
        done = threading.Event()

        def delivered(error: KafkaError | None, _message: Message) -> None:
            nonlocal waiting
            with self._lock:
                waiting -= 1
                if error is not None:
                    failed.append(error)
                if waiting == 0:
                    done.set()

        try:
            for key, value in messages:
                self.producer.produce(self.settings.topic, key=key, value=value,
                                      on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            log.warning("the broker cannot take events now: %s", exc)
            return False
        return done.wait(self.delivery_timeout_s + 1) and not failed

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1


def _answer(start_response: StartResponse, status: str, body: dict[str, Any],
            headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    encoded = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(encoded))), *(headers or [])])
    return [encoded]


def make_server(receiver: Receiver, host: str, port: int, *, threads: int = 8,
                channel_timeout: int = 30) -> Any:
    """A waitress server for ``receiver`` (not yet serving: call ``run()``)."""
    from waitress.server import create_server  # noqa: PLC0415 - only the receiver needs it

    return create_server(receiver, host=host, port=port, threads=threads,
                         channel_timeout=channel_timeout, ident="pudato-registry",
                         # Up to twice the limit is read and answered 413 with the reason;
                         # beyond that waitress answers 413 without reading it.
                         max_request_body_size=2 * openlineage.INPUT_MAX_BYTES,
                         clear_untrusted_proxy_headers=True)
