"""The web UI and JSON API: a read-only Flask shell over :mod:`pudato_registry.queries`.

Every page and API call reads through a pool of read-only connections with a
statement timeout; templates are autoescaped; the JSON API prints what the
CLI's ``--json`` does (:func:`pudato_registry.present.as_json`), GET only,
with bounded parameters and a 400 for any it does not know.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from flask import Flask, Response, abort, g, redirect, render_template, request
from psycopg_pool import ConnectionPool, PoolTimeout
from werkzeug.exceptions import HTTPException

from pudato_registry import diff, masking, queries
from pudato_registry.cli import JOB_STATUSES, parse_time
from pudato_registry.present import as_json, duration
from pudato_registry.store import connect, connection_options
from pudato_registry.web import pages

log = logging.getLogger(__name__)

API = "/api/v1"
MAX_LIMIT = 500
MAX_DEPTH = 5
COOKIE = "pudato_ui"
CSP = ("default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'; object-src 'none'")
_HERE = Path(__file__).parent


class ParameterError(ValueError):
    """A parameter the page or API cannot use; its text is the one line the user sees."""


@dataclass(frozen=True)
class UiConfig:
    """What the app is built with (from the settings, once, at the edge)."""

    token: str | None = None  # None: no login (loopback, or --no-auth given)
    mask_keys: tuple[str, ...] = masking.DEFAULT_KEYS
    refresh_s: float = 2.0
    # The dead letters: read from Kafka by the CLI's reader; (letters as rows, more) for a
    # kind and a limit. None: the page says the UI was started without a broker.
    dead_letters: Callable[[str | None, int], tuple[list[dict[str, Any]], int]] | None = None


def open_pool(dsn: str, *, statement_timeout_ms: int, size: int = 8) -> ConnectionPool:
    """A pool of connections that can only read, each statement ended after the timeout."""
    options = connection_options(dsn, options=(
        f"-c default_transaction_read_only=on -c statement_timeout={statement_timeout_ms}"))
    # One connection first: a database that is not there fails at once, in one line, rather
    # than after the pool's retries (each of which it logs).
    connect(dsn, **options).close()
    pool: ConnectionPool = ConnectionPool(dsn, min_size=1, max_size=size, kwargs=options,
                                          timeout=5.0, open=False, name="pudato-ui")
    pool.open(wait=True, timeout=10.0)
    return pool


def _session_value(token: str) -> str:
    """The cookie a login sets: derived from the token, so the token never sits in it."""
    return hmac.new(token.encode(), b"pudato-ui session v1", hashlib.sha256).hexdigest()


def _allowed(*names: str) -> None:
    """A 400 for any query parameter that is not one of ``names``."""
    unknown = sorted(set(request.args) - set(names))
    if unknown:
        raise ParameterError(f"unknown parameter {unknown[0]!r}: this takes "
                         + (", ".join(names) if names else "none"))


def _text(name: str, *, most: int = 2048) -> str | None:
    value = request.args.get(name, "").strip()
    if len(value) > most:
        raise ParameterError(f"{name} is {len(value)} characters long; at most {most}")
    return value or None


def _int(name: str, default: int, *, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ParameterError(f"{name}={raw[:40]!r} is not a whole number") from None
    if not low <= value <= high:
        raise ParameterError(f"{name}={value} is out of range: from {low} to {high}")
    return value


def _choice(name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
    value = _text(name) or default
    if value is not None and value not in choices:
        raise ParameterError(f"{name}={value[:40]!r} is not one of {', '.join(choices)}")
    return value


def _since() -> datetime | None:
    raw = _text("since", most=64)
    if raw is None:
        return None
    try:
        return parse_time(raw)
    except argparse.ArgumentTypeError as exc:
        raise ParameterError(f"since={raw!r}: an ISO 8601 time or a duration such as 24h or 7d"
                         ) from exc


def _filter(limit_default: int = 50) -> queries.JobFilter:
    before = _text("before", most=1200)
    try:
        cursor = pages.parse_cursor(before) if before else None
    except ValueError:
        raise ParameterError("before= is not a cursor from an 'older' link") from None
    return queries.JobFilter(
        pipeline=_text("pipeline", most=512), environment=_text("environment", most=512),
        namespace=_text("namespace", most=512), status=_choice("status", JOB_STATUSES),
        since=_since(), text=_text("text", most=200),
        limit=_int("limit", limit_default, low=1, high=MAX_LIMIT), before=cursor)


_JOB_FILTERS = ("pipeline", "environment", "namespace", "status", "since", "text", "before",
                "limit")


def _json(value: Any, status: int = 200) -> Response:
    return Response(as_json(value), status=status, mimetype="application/json")


def create_app(pool: ConnectionPool, config: UiConfig = UiConfig()) -> Flask:
    """The Flask application over ``pool`` (opened by the caller)."""
    app = Flask(__name__, template_folder=str(_HERE / "templates"),
                static_folder=str(_HERE / "static"), static_url_path="/static")
    app.config.update(MAX_CONTENT_LENGTH=16 * 1024)
    env = app.jinja_env
    env.globals.update(duration=duration, config=config, api=API, statuses=JOB_STATUSES)
    env.filters.update(utc=_utc, first_line=diff.first_line, json=as_json,
                       rows=diff.row_count, execution=diff.execution_text,
                       middle=_middle)

    def conn() -> psycopg.Connection[Any]:
        """The request's connection, taken from the pool at first use, given back after."""
        if "conn" not in g:
            g.conn_cm = pool.connection()
            g.conn = g.conn_cm.__enter__()
        found: psycopg.Connection[Any] = g.conn
        return found

    @app.teardown_request
    def _give_back(exc: BaseException | None) -> None:
        cm = g.pop("conn_cm", None)
        g.pop("conn", None)
        if cm is not None:
            cm.__exit__(None, None, None)

    _guard(app, config)
    _errors(app)
    _page_routes(app, config, conn)
    _api_routes(app, config, conn)
    _api_graph_routes(app, config, conn)
    return app


def _guard(app: Flask, config: UiConfig) -> None:
    """Login (when a token is set) and the security headers of every answer."""

    def signed_in() -> bool:
        if config.token is None:
            return True
        bearer = request.headers.get("Authorization", "")
        if bearer.startswith("Bearer ") and hmac.compare_digest(
                bearer[7:].strip().encode(), config.token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), _session_value(config.token).encode())

    @app.before_request
    def _login_first() -> Response | None:
        path = request.path
        if path.startswith("/static/") or path in ("/login", "/healthz") or signed_in():
            return None
        if path.startswith(API):
            return _json({"error": "sign in: send 'Authorization: Bearer <token>' "
                                   "(PUDATO_UI_TOKEN)"}, 401)
        target = request.full_path.rstrip("?")
        return redirect("/login?" + urlencode({"next": target}), 303)  # type: ignore[return-value]

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        target = request.values.get("next", "/jobs")
        if not target.startswith("/") or target.startswith("//"):
            target = "/jobs"  # never a redirect off this site
        if config.token is None:
            return redirect(target, 303)
        if request.method == "POST":
            given = request.form.get("token", "").strip()
            if hmac.compare_digest(given.encode(), config.token.encode()):
                answer = redirect(target, 303)
                answer.set_cookie(COOKIE, _session_value(config.token), httponly=True,
                                  samesite="Strict", secure=request.is_secure, path="/")
                return answer
            return render_template("login.html", next=target, wrong=True), 401
        return render_template("login.html", next=target, wrong=False)

    @app.post("/logout")
    def logout() -> Any:
        answer = redirect("/login", 303)
        answer.delete_cookie(COOKIE, path="/")
        return answer

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.after_request
    def _headers(answer: Response) -> Response:
        answer.headers["Content-Security-Policy"] = CSP
        answer.headers["X-Content-Type-Options"] = "nosniff"
        answer.headers["Referrer-Policy"] = "same-origin"
        answer.headers["X-Frame-Options"] = "DENY"
        if not request.path.startswith("/static/"):
            answer.headers["Cache-Control"] = "no-store"
        return answer


def _errors(app: Flask) -> None:
    """One line for every failure, as JSON under the API and as a page elsewhere."""

    def answer(status: int, message: str) -> Any:
        if request.path.startswith(API):
            return _json({"error": message}, status)
        return render_template("error.html", status=status, message=message), status

    @app.errorhandler(ParameterError)
    def _bad(exc: ParameterError) -> Any:
        return answer(400, str(exc))

    @app.errorhandler(psycopg.errors.QueryCanceled)
    def _slow(exc: Exception) -> Any:
        return answer(503, "the query took longer than the UI's statement timeout "
                           "(PUDATO_UI_STATEMENT_TIMEOUT_MS); narrow the filter")

    @app.errorhandler(PoolTimeout)
    @app.errorhandler(psycopg.OperationalError)
    def _down(exc: Exception) -> Any:
        log.warning("ui: the database did not answer: %s", exc)
        return answer(503, "the database does not answer; try again in a moment")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        return answer(exc.code or 500, exc.description or exc.name)


def _utc(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + " UTC"
    return "" if value is None else str(value)


def _middle(value: Any, width: int = 64) -> str:
    text = "" if value is None else str(value)
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head):]}"


def _script_json(value: Any) -> str:
    """JSON to sit inside a ``<script type="application/json">``: no ``<``, ``>`` or ``&``
    in it (a location ``</script><script>...`` stays a string), as JSON escapes."""
    return (as_json(value).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def _partial() -> bool:
    """An htmx request that wants only the part it swaps in."""
    return request.headers.get("HX-Request") == "true"


def _lineage_args() -> dict[str, Any]:
    direction = _choice("direction", ("both", "upstream", "downstream"), "both")
    return {"upstream": direction in ("both", "upstream"),
            "downstream": direction in ("both", "downstream"),
            "depth": _int("depth", 1, low=1, high=MAX_DEPTH),
            "namespace": _text("namespace", most=512),
            "environment": _text("environment", most=512)}


ConnOf = Callable[[], psycopg.Connection[Any]]


def _older(path: str, kept: dict[str, str], found: list[dict[str, Any]],
           where: queries.JobFilter) -> str | None:
    """The next (older) page's URL after a full page of jobs, else None."""
    if len(found) < where.limit:
        return None
    return f"{path}?{urlencode({**kept, 'before': pages.cursor_of(found[-1])})}"


def _pipeline_runs(conn: ConnOf, pipeline: str) -> queries.PipelineRuns:
    """The grid's runs, for the page and the API alike."""
    return queries.pipeline_runs(conn(), pipeline, environment=_text("environment"),
                                 namespace=_text("namespace"),
                                 runs=_int("runs", 25, low=1, high=100))


def _location_runs(conn: ConnOf) -> tuple[str, queries.LineageRuns]:
    """The location asked about and a page of the runs behind it (page and API)."""
    location = _text("location")
    if not location:
        raise ParameterError("location= is required: the dataset whose runs to list")
    return location, queries.lineage_runs(
        conn(), location, pipeline=_text("pipeline"), step_name=_text("step"),
        limit=_int("limit", 50, low=1, high=MAX_LIMIT),
        offset=_int("offset", 0, low=0, high=1_000_000))


def _job_page(conn: ConnOf, config: UiConfig, job_id: str) -> dict[str, Any]:
    """Everything the job page shows."""
    job, steps, more = queries.job_with_steps(conn(), job_id, 500)
    if job is None:
        abort(404, f"no job {job_id[:200]!r}")
    now = datetime.now(UTC)
    typical = {name: pages.median(values)
               for name, values in queries.step_baselines(conn(), job, 20).items()}
    took = {s["step_id"]: (s.get("duration_ms") if s.get("duration_ms") is not None
                           else pages.elapsed_ms(s.get("started_at"), s.get("completed_at"),
                                                 now)) for s in steps}
    return {"job": job, "steps": steps, "more": more, "now": now,
            "gantt": pages.gantt(job, steps, now), "typical": typical, "took": took,
            "parameters": masking.masked(job.get("parameters") or {}, config.mask_keys),
            "request_": masking.masked(job.get("request") or {}, config.mask_keys),
            "job_took": pages.elapsed_ms(job.get("started_at"), job.get("completed_at"), now),
            "against": pages.against,
            "live": job.get("status") in ("pending", "running")}


def _page_routes(app: Flask, config: UiConfig, conn: ConnOf) -> None:
    @app.get("/")
    def index() -> Any:
        return redirect("/jobs", 302)

    @app.get("/jobs")
    def jobs() -> Any:
        where = _filter()
        found = queries.list_jobs(conn(), where)
        counts, capped = queries.count_jobs(conn(), queries.JobFilter(
            pipeline=where.pipeline, environment=where.environment, namespace=where.namespace,
            since=where.since, text=where.text))
        failed = queries.failed_steps(conn(), [j["job_id"] for j in found])
        kept = {k: v for k, v in request.args.items() if k not in ("before", "limit") and v}
        older = _older("/jobs", kept, found, where)
        page = "jobs_results.html" if _partial() else "jobs.html"
        return render_template(page, jobs=found, where=where, counts=counts, capped=capped,
                               failed=failed, older=older, args=kept,
                               total=sum(counts.values()),
                               shown=counts.get(where.status, 0) if where.status
                               else sum(counts.values()))

    @app.get("/jobs/<path:job_id>")
    def job(job_id: str) -> Any:
        page = "job_body.html" if _partial() else "job.html"
        return render_template(page, **_job_page(conn, config, job_id))

    @app.get("/pipelines/<path:pipeline>")
    def pipeline(pipeline: str) -> Any:
        found = _pipeline_runs(conn, pipeline)
        if not found.jobs:
            abort(404, f"no runs of pipeline {pipeline[:200]!r}")
        return render_template("pipeline.html", p=found,
                               grid=pages.grid(found.jobs, found.steps))

    @app.get("/lineage")
    def lineage() -> Any:
        location, search = _text("location"), _text("q", most=200)
        options = _lineage_args()
        graph = near = None
        matches: list[queries.KnownLocation] = []
        if location:
            graph = queries.lineage_graph(conn(), location, **options)
            if not graph.found:
                near = queries.nearest_locations(conn(), location)
        elif search:
            matches = queries.search_locations(conn(), search, limit=50)
        direction = request.args.get("direction") or "both"
        return render_template("lineage.html", graph=graph, location=location, near=near,
                               search=search, matches=matches, options=options,
                               direction=direction,
                               data=_script_json(graph.as_dict()) if graph else None)

    @app.get("/lineage/runs")
    def lineage_runs() -> Any:
        location, found = _location_runs(conn)
        page = "runs_part.html" if _partial() else "runs.html"
        return render_template(page, location=location, runs=found,
                               pipeline=_text("pipeline"), step=_text("step"))

    @app.get("/dead-letters")
    def dead_letters() -> Any:
        kind, limit = _text("kind", most=64), _int("limit", 100, low=1, high=MAX_LIMIT)
        rows, more = config.dead_letters(kind, limit) if config.dead_letters else ([], 0)
        return render_template("dead_letters.html", rows=rows, more=more, kind=kind,
                               limit=limit, available=config.dead_letters is not None)


def _api_routes(app: Flask, config: UiConfig, conn: ConnOf) -> None:
    @app.get(f"{API}/jobs")
    def api_jobs() -> Response:
        _allowed(*_JOB_FILTERS)
        where = _filter()
        found = queries.list_jobs(conn(), where)
        answer = _json(found)
        kept = {k: v for k, v in request.args.items() if k != "before"}
        following = _older(f"{API}/jobs", kept, found, where)
        if following:
            answer.headers["Link"] = f'<{following}>; rel="next"'
        return answer

    @app.get(f"{API}/jobs/<path:job_id>")
    def api_job(job_id: str) -> Response:
        _allowed("limit")
        job, steps, more = queries.job_with_steps(
            conn(), job_id, _int("limit", 1000, low=1, high=1000))
        if job is None:
            return _json({"error": f"no job {job_id[:200]!r}"}, 404)
        answer = _json({"job": masking.masked_job(job, config.mask_keys), "steps": steps})
        if more:  # the CLI says it on stderr; the body stays what `jobs show --json` prints
            answer.headers["X-More-Steps"] = str(more)
        return answer

    @app.get(f"{API}/diff")
    def api_diff() -> Response:
        _allowed("first", "second", "previous_succeeded", "baseline")
        first = _text("first", most=512)
        if first is None:
            raise ParameterError("first= is required: the job to compare (second= defaults to "
                             "the run before it)")
        second = _text("second", most=512)
        later = queries.run_facts(conn(), second or first)
        if later is None:
            return _json({"error": f"no job {(second or first)!r}"}, 404)
        if second is None:
            before = queries.previous_run(conn(), dict(later.job), succeeded=_choice(
                "previous_succeeded", ("true", "false"), "false") == "true")
            if before is None:
                return _json({"error": "no earlier run of that pipeline: give second="}, 404)
            earlier = queries.run_facts(conn(), before["job_id"])
        else:
            earlier = queries.run_facts(conn(), first)
        if earlier is None:
            return _json({"error": f"no job {first!r}"}, 404)
        found = diff.compare(earlier, later, baselines=queries.step_baselines(
            conn(), dict(later.job), _int("baseline", 20, low=1, high=100)),
            words=config.mask_keys)
        return _json(diff.diff_as_dict(found))

    @app.get(f"{API}/reproduce")
    def api_reproduce() -> Response:
        _allowed("job_id")
        job_id = _text("job_id", most=512)
        if job_id is None:
            raise ParameterError("job_id= is required")
        facts = queries.run_facts(conn(), job_id)
        if facts is None:
            return _json({"error": f"no job {job_id!r}"}, 404)
        card = diff.card(facts, queries.overwrites(conn(), facts), config.mask_keys)
        return _json(diff.card_as_dict(card))



def _api_graph_routes(app: Flask, config: UiConfig, conn: ConnOf) -> None:
    @app.get(f"{API}/pipelines/<path:pipeline>")
    def api_pipeline(pipeline: str) -> Response:
        _allowed("environment", "namespace", "runs")
        found = _pipeline_runs(conn, pipeline)
        return _json({"pipeline": found.pipeline, "environment": found.environment,
                      "namespace": found.namespace, "runs": found.jobs, "steps": found.steps})

    @app.get(f"{API}/lineage")
    def api_lineage() -> Response:
        _allowed("location", "direction", "depth", "namespace", "environment")
        location = _text("location")
        if location is None:
            raise ParameterError("location= is required (search with /api/v1/lineage/search?q=)")
        return _json(queries.lineage_graph(conn(), location, **_lineage_args()).as_dict())

    @app.get(f"{API}/lineage/runs")
    def api_lineage_runs() -> Response:
        _allowed("location", "pipeline", "step", "limit", "offset")
        return _json(_location_runs(conn)[1].rows())

    @app.get(f"{API}/lineage/search")
    def api_search() -> Response:
        _allowed("q", "limit")
        text = _text("q", most=200)
        if text is None:
            raise ParameterError("q= is required: text in the locations to find")
        return _json(queries.search_locations(conn(), text,
                                              limit=_int("limit", 20, low=1, high=MAX_LIMIT)))

    @app.get(f"{API}/dead-letters")
    def api_dead_letters() -> Response:
        _allowed("kind", "limit")
        if config.dead_letters is None:
            return _json({"error": "the UI runs without a broker: no dead letters to read"},
                         503)
        rows, _more = config.dead_letters(_text("kind", most=64),
                                          _int("limit", 100, low=1, high=MAX_LIMIT))
        return _json(rows)


def make_server(app: Flask, host: str, port: int, *, threads: int = 8) -> Any:
    """A waitress server for the app (the receiver's HTTP stack), not yet serving."""
    from waitress.server import create_server  # noqa: PLC0415

    return create_server(app, host=host, port=port, threads=threads, ident="pudato-registry",
                         channel_timeout=30, clear_untrusted_proxy_headers=True)


def serve(server: Any, stop: Callable[[], bool]) -> None:
    """Serve until ``stop()`` is true (a signal set it), then close: every wait checks it."""
    from waitress import wasyncore  # noqa: PLC0415

    try:
        while not stop():
            wasyncore.loop(timeout=0.2, map=server._map, use_poll=True, count=1)
    finally:
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
        wasyncore.close_all(server._map)
