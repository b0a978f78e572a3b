"""The OpenLineage HTTP receiver: ``POST /api/v1/lineage``, as OpenLineage's HttpTransport sends.

A client pointed at Marquez works unchanged. Each request body is one
RunEvent; the answer says what became of it:

* ``201`` once the broker has acknowledged every registry event it became;
* ``200`` for input the registry ignores (a JobEvent, a streaming run ...);
* ``400`` with the reason for invalid input (nothing is published);
* ``401`` without the configured Bearer key, decided on the headers: the body
  of a request without the key is never read;
* ``413`` for a body over the input limit, *after* inflating: ``Content-Encoding:
  gzip`` (HttpTransport's ``compression: gzip``) is inflated in bounded steps, so
  a small body that would inflate to gigabytes costs at most the limit;
* ``415`` for any other content encoding;
* ``503`` with ``Retry-After`` while the broker cannot take the events, within
  ``PUDATO_OL_HTTP_PUBLISH_TIMEOUT_S`` (below HttpTransport's 5 s timeout, so real
  clients see it and retry; nothing is lost, since the translation is
  deterministic and a repeat is dropped by the worker), and while the
  receiver is busy decoding more than its budget or stopping.

Every refusal is counted on the receiver's own ``/metrics`` and logged, at most
one line per kind of refusal every ten seconds, so no client can flood the log.

The server is waitress, a pure-Python WSGI server in production use for years:
its I/O loop reads requests, so a slow or idle client holds a socket, never a
thread. On top of it (:func:`make_server`): thousands of connections (poll, not
select), a deadline for each request's headers and body shorter than the idle
timeout (a client trickling a byte at a time is dropped, whatever it sends), and
authentication, encoding and length checks on the headers, before any body is
read. Decoding is bounded by a byte budget shared by every request in flight,
so memory stays bounded however many large bodies arrive at once.
"""

from __future__ import annotations

import hmac
import json
import logging
import resource
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from pudato_registry import inputs, kafka, logs, openlineage
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection

log = logging.getLogger(__name__)
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
LINEAGE_PATH = "/api/v1/lineage"
_GZIP = frozenset({"gzip", "x-gzip"})
Refusal = tuple[str, str, str]  # HTTP status, reason (a metric label), message
_STOPPING = -2  # not a KafkaError code: a publish given up because the receiver stops


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
        self.in_flight = Gauge("pudato_receiver_requests_in_flight",
                               "RunEvent requests being decoded or published now", registry=r)
        self.broker_up = Gauge("pudato_receiver_broker_reachable",
                               "1 while the broker answers the receiver's probes", registry=r)
        self.decode = Histogram("pudato_receiver_decode_seconds",
                                "Time to inflate, parse and translate one request body",
                                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25, 0.5, 1, 2.5), registry=r)


class ByteBudget:
    """Bytes of request bodies being decoded at once: a request waits for room, or gives up.

    A body takes its size; one larger than the whole budget waits until nothing
    else is decoding. Decoding an 8 MiB RunEvent costs ten times that in objects,
    so this, not the thread count, is what bounds the receiver's memory.
    """

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self._room = threading.Condition()

    def take(self, size: int, timeout: float) -> bool:
        """Reserve ``size`` bytes, waiting up to ``timeout`` s; False if there was no room."""
        with self._room:
            if not self._room.wait_for(lambda: self.used == 0 or self.used + size <= self.total,
                                       timeout):
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        """Return what :meth:`take` reserved."""
        with self._room:
            self.used -= size
            self._room.notify_all()


class Receiver:
    """The WSGI application: translate, publish, answer."""

    def __init__(self, settings: Settings, *, decode: inputs.Decoder | None = None,
                 producer: Producer | None = None, delivery_timeout_s: float | None = None,
                 probe_interval_s: float | None = None) -> None:
        self.settings = settings
        self.decode = decode or inputs.decoder(settings.input_format, settings)
        self.delivery_timeout_s = (settings.ol_http_publish_timeout_s
                                   if delivery_timeout_s is None else delivery_timeout_s)
        self.producer = producer or kafka.make_producer(settings, **{
            "client.id": "pudato-openlineage-receiver",
            "message.timeout.ms": int(self.delivery_timeout_s * 1000), "log_level": 2})
        key = settings.ol_api_key
        self._expected = None if key is None else f"Bearer {key.get_secret_value()}".encode()
        self._lock = threading.Lock()
        self.counts = {"published": 0, "rejected": 0, "ignored": 0, "unavailable": 0}
        self.metrics = ReceiverMetrics()
        self._sparse = logs.Sparse(log)
        self._budget = ByteBudget(settings.ol_http_decode_budget_bytes)
        self.stopping = threading.Event()  # set: answer 503 at once, publish nothing more
        self.broker_reachable = True  # until a probe says otherwise
        self._probe_interval_s = (settings.ol_http_probe_interval_s if probe_interval_s is None
                                  else probe_interval_s)
        self._stop = threading.Event()
        # One thread serves every request's delivery reports, so that a request wakes
        # the moment its own events are acknowledged; another asks the broker how it is.
        self._threads = [threading.Thread(target=self._poll, daemon=True,
                                          name="pudato-receiver-deliveries"),
                         threading.Thread(target=self._probe, daemon=True,
                                          name="pudato-receiver-probe")]
        for thread in self._threads:
            thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)

    def _probe(self) -> None:
        """Readiness: whether the broker answers a metadata request, every few seconds."""
        while not self._stop.is_set():
            try:
                self.producer.list_topics(self.settings.topic,
                                          timeout=min(self._probe_interval_s, 2.0))
                reachable = True
            except KafkaException:
                reachable = False
            if reachable != self.broker_reachable:
                if reachable:
                    log.info("the broker at %s answers again", self.settings.bootstrap_servers)
                else:
                    log.warning("the broker at %s does not answer: answering 503 until it "
                                "does", self.settings.bootstrap_servers)
            self.broker_reachable = reachable
            self.metrics.broker_up.set(1 if reachable else 0)
            self._stop.wait(self._probe_interval_s)

    def close(self, timeout: float = 5.0) -> None:
        """Stop: what is still unacknowledged was answered 503 (its client retries), so drop it.

        Every 201 was sent after its events were acknowledged, so nothing answered
        201 is lost; waiting on a broker that is away would only delay the exit.
        """
        self.stopping.set()
        self.producer.purge()
        self.producer.flush(timeout)
        self._stop.set()
        poller, probe = self._threads
        poller.join()
        probe.join(timeout)  # a daemon: a probe still waiting on the broker ends with us

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request."""
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz":
            return self._answer(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            if self.stopping.is_set() or not self.broker_reachable:
                return self._answer(start_response, "503 Service Unavailable", {
                    "status": "stopping" if self.stopping.is_set() else "broker unreachable"})
            return self._answer(start_response, "200 OK", {"status": "ready"})
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

    # --- decided on the headers, before any body is read ------------------------

    def screen(self, headers: Mapping[str, str], remote: str) -> Refusal | None:
        """Why a POST with these headers (WSGI names, no ``HTTP_``) is refused, if it is.

        The server calls this as soon as the headers are in, so that a request
        without the key, or too large, or in another encoding never has its body
        read; it counts and logs the refusal.
        """
        refusal = self._screen(headers)
        if refusal is not None:
            self._refused(remote, *refusal)
        return refusal

    def _screen(self, headers: Mapping[str, str]) -> Refusal | None:
        if self._expected is not None and not hmac.compare_digest(
                headers.get("AUTHORIZATION", "").encode("utf-8", "replace"), self._expected):
            return ("401 Unauthorized", "unauthorized",
                    "a valid 'Authorization: Bearer <api key>' is required")
        encoding = str(headers.get("CONTENT_ENCODING") or "identity").strip().lower()
        if encoding not in _GZIP and encoding != "identity":
            return ("415 Unsupported Media Type", "unsupported_encoding",
                    f"Content-Encoding {encoding[:40]!r} is not supported; send gzip or none")
        try:
            length = int(headers.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            return "400 Bad Request", "bad_length", "Content-Length must be a whole number"
        limit = openlineage.INPUT_MAX_BYTES
        if length > limit:
            return "413 Content Too Large", "too_large", f"a RunEvent is at most {limit} bytes"
        return None

    # --- the request ------------------------------------------------------------

    def _lineage(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        with self.metrics.in_flight.track_inprogress():
            return self._run_event(environ, start_response)

    def _run_event(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        headers = {k.removeprefix("HTTP_"): str(v) for k, v in environ.items()
                   if k.startswith("HTTP_") or k in ("CONTENT_LENGTH", "CONTENT_TYPE")}
        refusal = self._screen(headers)  # again: the WSGI app may be served by another server
        if refusal is not None:
            return self._refuse(environ, start_response, *refusal)
        if self.stopping.is_set() or not self.broker_reachable:
            return self._unavailable(start_response, "the receiver is stopping"
                                     if self.stopping.is_set() else "the broker is unreachable")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        gzipped = headers.get("CONTENT_ENCODING", "").strip().lower() in _GZIP
        # A compressed body may inflate to the limit: it is budgeted at that.
        cost = openlineage.INPUT_MAX_BYTES if gzipped else max(length, 1)
        if not self._budget.take(cost, timeout=self.delivery_timeout_s):
            return self._unavailable(start_response, "the receiver is busy decoding")
        try:
            started = time.perf_counter()
            body = self._body(environ, length, gzipped=gzipped)
            if isinstance(body, tuple):
                return self._refuse(environ, start_response, *body)
            result = self.decode(body)
            del body
            self.metrics.decode.observe(time.perf_counter() - started)
        finally:
            self._budget.give(cost)
        if isinstance(result, Rejection):
            self._count("rejected")
            return self._refuse(environ, start_response, "400 Bad Request", result.kind.value,
                                result.message)
        if isinstance(result, inputs.Ignored):
            self._count("ignored")
            self.metrics.ignored.labels(result.kind).inc()
            return self._answer(start_response, "200 OK", {"ignored": result.reason})
        failed = self._publish(result.messages)
        if failed is not None:
            if failed == _STOPPING:
                return self._unavailable(start_response, "the receiver is stopping")
            if failed == KafkaError.MSG_SIZE_TOO_LARGE:
                return self._refuse(environ, start_response, "413 Content Too Large",
                                    "too_large_for_topic", "a translated event is larger than "
                                    f"topic {self.settings.topic} takes")
            return self._unavailable(start_response, "the broker did not take the events")
        self._count("published")
        self.metrics.published.inc(len(result.messages))
        return self._answer(start_response, "201 Created", {"events": len(result.messages)})

    def _body(self, environ: dict[str, Any], length: int, *, gzipped: bool) -> bytes | Refusal:
        """The request's RunEvent bytes, inflated; or why it is refused."""
        limit = openlineage.INPUT_MAX_BYTES
        body: bytes = environ["wsgi.input"].read(length)
        if not gzipped:
            return body
        try:
            return inflate(body, limit)
        except TooLargeError:
            return ("413 Content Too Large", "too_large",
                    f"a RunEvent is at most {limit} bytes, inflated")
        except zlib.error as exc:
            return ("400 Bad Request", "not_gzip",
                    f"Content-Encoding says gzip, but the body is not: {exc}")

    def _publish(self, messages: list[tuple[bytes, bytes]]) -> int | None:
        """Produce and wait for this request's acknowledgements only.

        Returns None once all are acknowledged, else the KafkaError code that failed
        (-1: no answer in time; :data:`_STOPPING`: the receiver is stopping).
        """
        waiting = len(messages)
        failed: list[KafkaError] = []
        done = threading.Event()

        def delivered(error: KafkaError | None, _message: Message) -> None:
            nonlocal waiting
            with self._lock:
                waiting -= 1
                if error is not None:
                    failed.append(error)
                if waiting == 0 or error is not None:
                    done.set()

        try:
            for key, value in messages:
                self.producer.produce(self.settings.topic, key=key, value=value,
                                      on_delivery=delivered)
        except BufferError as exc:
            log.warning("the broker cannot take events now: %s", exc)
            return -1
        except KafkaException as exc:
            code = exc.args[0].code()
            log.warning("the broker cannot take events now: %s", exc.args[0].str())
            return int(code)
        deadline = time.monotonic() + self.delivery_timeout_s + 0.2
        while not done.wait(0.1):  # a stop answers the client at once
            if self.stopping.is_set():
                return _STOPPING
            if time.monotonic() > deadline:
                return -1
        return int(failed[0].code()) if failed else None

    def _unavailable(self, start_response: StartResponse, why: str) -> list[bytes]:
        self._count("unavailable")
        self.metrics.unavailable.inc()
        return self._answer(start_response, "503 Service Unavailable",
                            {"error": f"{why}; try again"}, [("Retry-After", "1")])

    def _refuse(self, environ: dict[str, Any], start_response: StartResponse, status: str,
                reason: str, message: str) -> list[bytes]:
        """Answer a refusal: counted by reason, logged sparsely (a client may send thousands)."""
        self._refused(str(environ.get("REMOTE_ADDR", "?")), status, reason, message)
        return self._answer(start_response, status, {"error": reason, "reason": message})

    def _refused(self, remote: str, status: str, reason: str, message: str) -> None:
        self.metrics.refused.labels(reason).inc()
        self._sparse.warning(reason, "refused a request from %s: %s %s: %s", remote, status,
                             reason, message[:300])

    def _answer(self, start_response: StartResponse, status: str, body: dict[str, Any],
                headers: list[tuple[str, str]] | None = None) -> list[bytes]:
        self.metrics.requests.labels(status.split(" ", 1)[0]).inc()
        return _answer(start_response, status, body, headers)

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
                channel_timeout: int | None = None, request_timeout_s: float | None = None,
                connection_limit: int | None = None) -> Any:
    """A waitress server for ``receiver`` (not yet serving: call ``run()`` or :func:`serve`)."""
    # Only the receiver needs waitress: imported here, to start the other commands fast.
    from waitress.channel import HTTPChannel  # noqa: PLC0415
    from waitress.parser import HTTPRequestParser  # noqa: PLC0415
    from waitress.server import create_server  # noqa: PLC0415
    from waitress.utilities import Error  # noqa: PLC0415

    s = receiver.settings
    idle = s.ol_http_idle_timeout_s if channel_timeout is None else channel_timeout
    deadline = s.ol_http_request_timeout_s if request_timeout_s is None else request_timeout_s
    limit = s.ol_http_connection_limit if connection_limit is None else connection_limit
    _allow_descriptors(limit + 64)

    class RefusedError(Error):  # type: ignore[misc]
        """A refusal decided on the headers, answered as the application answers."""

        def __init__(self, status: str, reason: str, message: str) -> None:
            super().__init__(message)
            self.code, self.reason = status.split(" ", 1)
            self.error = reason

        def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]],
                                                                 bytes]:
            body = json.dumps({"error": self.error, "reason": self.body}).encode()
            receiver.metrics.requests.labels(self.code).inc()
            return (f"{self.code} {self.reason}", [("Content-Type", "application/json")], body)

    class Parser(HTTPRequestParser):  # type: ignore[misc]
        """Notes when the request began, and screens its headers before its body."""

        def __init__(self, adj: Any) -> None:
            super().__init__(adj)
            self.began = time.monotonic()
            self.remote = "?"
            self.refused: Any = None

        def received(self, data: bytes) -> int:
            consumed = int(super().received(data))
            if self.refused is not None:
                self.error = self.refused  # waitress's own body limit must not replace it
            return consumed

        def parse_header(self, header_plus: bytes) -> None:
            super().parse_header(header_plus)
            if self.command == "POST" and self.path == LINEAGE_PATH:
                refusal = receiver.screen(self.headers, self.remote)
                if refusal is not None:
                    self.error = self.refused = RefusedError(*refusal)
                    # The body is dropped as it arrives, never kept: the client gets
                    # its answer once it has sent it (within the request's deadline).
                    length = int(getattr(self, "content_length", 0))
                    self.body_rcv = None if self.chunked else _Discard(length)
                    self.content_length = 0

    class Channel(HTTPChannel):  # type: ignore[misc]
        parser_class = Parser

        def received(self, data: bytes) -> bool:
            if getattr(self, "request", None) is None and data:
                parser = Parser(self.adj)
                parser.remote = str(self.addr[0]) if self.addr else "?"
                self.request = parser
            return bool(super().received(data))

    server = create_server(
        receiver, host=host, port=port, threads=threads, channel_timeout=idle,
        connection_limit=limit, asyncore_use_poll=True,  # select() stops at 1,024 sockets
        cleanup_interval=1, ident="pudato-registry", clear_untrusted_proxy_headers=True,
        # A chunked body past this is refused by waitress itself.
        max_request_body_size=openlineage.INPUT_MAX_BYTES + 1)
    server.channel_class = Channel
    original = server.maintenance

    def maintenance(now: float) -> None:
        """Idle channels close after the idle timeout; a request not in by its deadline too."""
        original(now)
        cutoff = time.monotonic() - deadline
        for channel in list(server.active_channels.values()):
            request = channel.request
            if (request is not None and not channel.requests and not request.completed
                    and getattr(request, "began", cutoff) < cutoff):
                channel.will_close = True
                receiver.metrics.refused.labels("request_timeout").inc()

    server.maintenance = maintenance
    return server


class _Discard:
    """A body receiver (waitress's interface) that counts the bytes of a body and drops them."""

    error = None

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.completed = length == 0

    def received(self, data: bytes) -> int:
        taken = min(len(data), self.remaining)
        self.remaining -= taken
        self.completed = self.remaining == 0
        return taken

    def __len__(self) -> int:
        return 0

    def getfile(self) -> Any:
        import io  # noqa: PLC0415

        return io.BytesIO()

    def getbuf(self) -> Any:
        return self.getfile()


def serve(server: Any, receiver: Receiver, stop: threading.Event, grace_s: float = 5.0) -> None:
    """Serve until ``stop`` is set; then answer what is in flight (or 503), and close.

    Signal handlers only set ``stop``. Once it is set the server accepts no more
    connections, requests still waiting for the broker are answered 503 (their
    clients retry), and what is being answered is flushed for up to ``grace_s``.
    """
    from waitress import wasyncore  # noqa: PLC0415

    while not stop.is_set():
        wasyncore.loop(timeout=0.2, map=server._map, use_poll=True, count=1)
    server.accepting = False
    receiver.stopping.set()
    finish = time.monotonic() + grace_s
    while time.monotonic() < finish and _busy(server):
        wasyncore.loop(timeout=0.05, map=server._map, use_poll=True, count=1)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
    wasyncore.close_all(server._map)


def _busy(server: Any) -> bool:
    dispatcher = server.task_dispatcher
    if dispatcher.queue or dispatcher.active_count:
        return True
    return any(channel.requests or channel.total_outbufs_len
               for channel in list(server.active_channels.values()))


def _allow_descriptors(wanted: int) -> None:
    """Raise the soft limit on open files toward ``wanted`` (the hard limit caps it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
