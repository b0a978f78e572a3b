"""The OpenLineage HTTP receiver: ``POST /api/v1/lineage``, as OpenLineage's HttpTransport sends.

A client pointed at Marquez works unchanged. Each request body is one
RunEvent; the answer says what became of it:

* ``201`` once the broker has acknowledged every registry event it became;
* ``200`` for input the registry ignores (a JobEvent, a streaming run ...);
* ``400`` with the reason for invalid input (nothing is published);
* ``401`` without the configured Bearer key;
* ``503`` while the broker cannot take the events (clients retry; nothing is lost,
  since the translation is deterministic and a repeat is dropped by the worker).

The server is waitress: a pure-Python WSGI server in production use for years,
which reads each request whole on its own I/O loop before a worker thread sees
it, so a slow or idle client holds a socket, never a thread, and is dropped after
``channel_timeout``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pudato_registry import inputs, kafka, openlineage
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection

log = logging.getLogger(__name__)
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
LINEAGE_PATH = "/api/v1/lineage"


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
            return _answer(start_response, "200 OK", {"status": "ok"})
        if path != LINEAGE_PATH:
            return _answer(start_response, "404 Not Found", {"error": f"no {path}"})
        if method != "POST":
            return _answer(start_response, "405 Method Not Allowed",
                           {"error": f"{LINEAGE_PATH} takes POST"})
        if self._expected is not None and environ.get("HTTP_AUTHORIZATION") != self._expected:
            return _answer(start_response, "401 Unauthorized",
                           {"error": "a valid 'Authorization: Bearer <api key>' is required"})
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= openlineage.INPUT_MAX_BYTES:
            return self._count("rejected", _answer(start_response, "400 Bad Request", {
                "error": "too_large", "reason": f"a RunEvent is at most "
                                                f"{openlineage.INPUT_MAX_BYTES} bytes"}))
        result = self.decode(environ["wsgi.input"].read(length))
        if isinstance(result, Rejection):
            return self._count("rejected", _answer(start_response, "400 Bad Request", {
                "error": result.kind.value, "reason": result.message}))
        if isinstance(result, inputs.Ignored):
            return self._count("ignored", _answer(start_response, "200 OK", {
                "ignored": result.reason}))
        if not self._publish(result.messages):
            return self._count("unavailable", _answer(
                start_response, "503 Service Unavailable",
                {"error": "the broker did not take the events; try again"},
                [("Retry-After", "5")]))
        return self._count("published", _answer(start_response, "201 Created", {
            "events": len(result.messages)}))

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

    def _count(self, what: str, answer: Iterable[bytes]) -> Iterable[bytes]:
        with self._lock:
            self.counts[what] += 1
        return answer


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
                         # Up to twice the limit is read and answered 400 with the reason;
                         # beyond that waitress answers 413 without reading it.
                         max_request_body_size=2 * openlineage.INPUT_MAX_BYTES,
                         clear_untrusted_proxy_headers=True)
