"""The master's JSON API under ``/api/v1`` (Klein, app as a class) and ``/metrics``.

Commands go through the same cell inputs as the handler's MQTT commands and get the same
refusals (protocol.md §11.1, §4.3): ``notlot``, ``havelot`` and ``busy`` become HTTP 409,
``error`` becomes 400 when the master machine accepts the command in the current state (so
the input was at fault, e.g. an unknown lot) and 409 otherwise.  The API keeps no table of
its own: it asks :func:`ate.master.machine.refusal_type`, and a usersettings change the
machine refuses comes back as ``CommandRefused``.  Every error body is
``{"error": <code>, "message": <text>}``.  The routes are described by ``openapi.json``,
served at ``/api/v1/openapi.json``.

:class:`PrometheusMetrics` renders ``/metrics`` in the Prometheus text exposition format
0.0.4 from the cell's counters, the lot's yields and bins, and a cycle-time histogram fed
by the cell's ``part`` events.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.web.resource import Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ate.master.alarming import AlarmError
from ate.master.cell import CommandRefused
from ate.master.machine import refusal_type
from ate.promtext import labels, number
from ate.protocol import messages as m
from ate.web.feed import MAX_RESULTS_BYTES, encode_results, strict_json

if TYPE_CHECKING:
    from ate.master.cell import Cell

__all__ = ["Api", "ApiError", "PrometheusMetrics", "MetricsResource", "OPENAPI_PATH",
           "http_status_for_refusal"]

OPENAPI_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")
MAX_BODY = 1024 * 1024
MAX_LAST = 1000


class ApiError(Exception):
    """An HTTP error with a JSON body ``{"error": code, "message": message}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def http_status_for_refusal(response: Any) -> int:
    """HTTP status of a cell ``ErrorResponse``: 409 for state conflicts, 400 for bad input."""
    if response.response_type == "error" and refusal_type(
            response.command_type, response.state) is None:
        return 400
    return 409


def _send(request: Any, obj: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return strict_json(obj)


def _body(request: Any) -> Any:
    """The request's JSON body (``{}`` when empty); ApiError 400 naming what is wrong."""
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise ApiError(413, "too-large", f"request body larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, "bad-json", f"request body is not valid JSON: {e}") from None
    except RecursionError:
        body = None
    else:
        if not m.json_too_deep(body):
            return body
    raise ApiError(400, "bad-json",
                   f"request body is nested deeper than {m.MAX_JSON_DEPTH} levels")


def _object_body(request: Any) -> dict:
    body = _body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "bad-request",
                       f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _site_infos(sites: Any) -> tuple[m.SiteInfo, ...] | None:
    """Validate the optional ``sites`` of POST commands/next (protocol.md §4.1)."""
    if sites is None:
        return None
    if not isinstance(sites, list) or not sites:
        raise ApiError(400, "bad-request", "sites must be a non-empty list of site objects")
    out = []
    known = ("siteid", "partid", "binning", "logflag", "additionalinfo")
    for i, entry in enumerate(sites):
        if isinstance(entry, (str, int)) and not isinstance(entry, bool):
            entry = {"siteid": str(entry)}
        if not isinstance(entry, dict):
            raise ApiError(400, "bad-request",
                           f"sites[{i}] must be an object with siteid, got {entry!r}")
        siteid = entry.get("siteid")
        if isinstance(siteid, int) and not isinstance(siteid, bool):
            siteid = str(siteid)
        if not isinstance(siteid, str) or not siteid.isdecimal():
            raise ApiError(400, "bad-request",
                           f"sites[{i}].siteid must be a decimal string, got {siteid!r}")
        extra = tuple((k, v) for k, v in entry.items() if k not in known)
        out.append(m.SiteInfo(siteid, entry.get("partid"), entry.get("binning"),
                              entry.get("logflag"), entry.get("additionalinfo"), extra))
    return tuple(out)


class Api:
    """``/api/v1``: mount ``Api(cell).app.resource()`` at ``api/v1``."""

    app = Klein()
    log = Logger(namespace="ate.web.api")

    def __init__(self, cell: Cell, *, openapi_path: str = OPENAPI_PATH) -> None:
        self.cell = cell
        self.openapi_path = openapi_path

    # -- errors --------------------------------------------------------------------------

    @app.handle_errors(ApiError)
    def _api_error(self, request: Any, failure: Any) -> bytes:
        e = failure.value
        return _send(request, {"error": e.code, "message": e.message}, e.status)

    @app.handle_errors(NotFound)
    def _not_found(self, request: Any, failure: Any) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return _send(request, {"error": "not-found", "message": f"no such resource: {path}"},
                     404)

    @app.handle_errors(MethodNotAllowed)
    def _not_allowed(self, request: Any, failure: Any) -> bytes:
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        allowed = ", ".join(sorted(failure.value.valid_methods or ()))
        if allowed:
            request.setHeader(b"allow", allowed.encode("ascii"))
        return _send(request, {"error": "method-not-allowed",
                               "message": f"{method} not allowed on {path} (allowed: {allowed})"},
                     405)

    @app.handle_errors(Exception)
    def _internal(self, request: Any, failure: Any) -> bytes:
        self.log.failure("API request {path} failed", failure,
                         path=request.path.decode("utf-8", "replace"))
        return _send(request, {"error": "internal",
                               "message": f"internal error: {failure.getErrorMessage()}"}, 500)

    # -- helpers -------------------------------------------------------------------------

    def _state(self) -> str:
        return str(self.cell.status().get("state", ""))

    def _command(self, request: Any, name: str, msg: Any) -> bytes:
        response = self.cell.command(msg, "api")
        if isinstance(response, m.ErrorResponse):
            return _send(request, {"error": response.response_type,
                                   "message": response.message or f"{name} refused",
                                   "state": response.state},
                         http_status_for_refusal(response))
        return _send(request, {"accepted": True, "command": name, "state": self._state()}, 202)

    # -- read-only -----------------------------------------------------------------------

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: Any) -> bytes:
        with open(self.openapi_path, "rb") as f:
            data = f.read()
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return data

    @app.route("/status", methods=["GET"])
    def status(self, request: Any) -> bytes:
        return _send(request, self.cell.status())

    @app.route("/lot", methods=["GET"])
    def lot(self, request: Any) -> bytes:
        lot = self.cell.lot
        if lot is None:
            raise ApiError(404, "notlot", "no lot has been loaded")
        job = self.cell.job
        status = self.cell.status()
        return _send(request, {
            "lot_number": status.get("lot_number") or getattr(job, "lot_number", ""),
            "state": status.get("state"),
            "datalog": status.get("datalog"),
            "job": _job_dict(job),
            "parts_tested": lot.parts_tested,
            "yields": lot.yields(),
            "bintable": lot.bintable(),
            "summary": lot.summary(),
            "lotdata": self.cell.lotdata(),
        })

    @app.route("/results", methods=["GET"])
    def results(self, request: Any) -> bytes:
        raw = request.args.get(b"last", [None])[0]
        last = MAX_LAST
        if raw is not None:
            text = raw.decode("utf-8", "replace")
            if not text.isdecimal() or not 1 <= int(text) <= MAX_LAST:
                raise ApiError(400, "bad-request",
                               f"last must be an integer 1..{MAX_LAST}, got {text!r}")
            last = int(text)
        lot = self.cell.lot
        results = list(lot.last_results()) if lot is not None else []
        array, omitted = encode_results(results[-last:], MAX_RESULTS_BYTES)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b'{"results":' + array + b',"omitted":' + str(omitted).encode() + b"}"

    @app.route("/settings", methods=["GET"])
    def settings(self, request: Any) -> bytes:
        return _send(request, self.cell.usersettings())

    @app.route("/logs", methods=["GET"])
    def logs(self, request: Any) -> bytes:
        logs = self.cell.logs
        entries = logs.entries(newest_first=True) if logs is not None else []
        raw = request.args.get(b"limit", [None])[0]
        if raw is not None:
            text = raw.decode("utf-8", "replace")
            if not text.isdecimal() or int(text) < 1:
                raise ApiError(400, "bad-request",
                               f"limit must be a positive integer, got {text!r}")
            entries = entries[: int(text)]
        level = logs.level if logs is not None else None
        return _send(request, {"level": level, "logs": entries})

    @app.route("/logs/file", methods=["GET"])
    def logfile(self, request: Any) -> bytes:
        logs = self.cell.logs
        if logs is None:
            raise ApiError(404, "not-found", "the master keeps no log")
        return _send(request, logs.logfile())

    # -- changes -------------------------------------------------------------------------

    @app.route("/settings", methods=["PUT"])
    def put_settings(self, request: Any) -> bytes:
        body = _body(request)
        items = body.get("testoptions") if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise ApiError(400, "bad-request",
                           "body must be {\"testoptions\": [{name, active, value}, ...]} "
                           "or a list of settings")
        try:
            self.cell.update_settings(items)
        except CommandRefused as e:  # the master machine refuses it in this state
            raise ApiError(409, e.refusal.response_type, e.refusal.message) from None
        except ValueError as e:
            rtype = refusal_type("usersettings", self._state())
            if rtype is not None:  # a cell that refuses by state without CommandRefused
                raise ApiError(409, rtype, str(e)) from None
            raise ApiError(400, "invalid", str(e)) from None
        return _send(request, self.cell.usersettings())

    @app.route("/logs/level", methods=["PUT"])
    def put_loglevel(self, request: Any) -> bytes:
        body = _object_body(request)
        if "level" not in body:
            raise ApiError(400, "bad-request", "body must be {\"level\": 10|20|30|40}")
        try:
            self.cell.set_loglevel(body["level"])
        except ValueError as e:
            raise ApiError(400, "invalid", str(e)) from None
        return _send(request, {"level": body["level"]})

    @app.route("/commands/load", methods=["POST"])
    def cmd_load(self, request: Any) -> bytes:
        body = _object_body(request)
        lot_number = body.get("lot_number", body.get("lotnumber"))
        if not isinstance(lot_number, str) or not lot_number.strip():
            raise ApiError(400, "bad-request",
                           f"lot_number must be a non-empty string, got {lot_number!r}")
        return self._command(request, "load", m.Load(lot_number=lot_number.strip()))

    @app.route("/commands/next", methods=["POST"])
    def cmd_next(self, request: Any) -> bytes:
        body = _object_body(request)
        return self._command(request, "next", m.Next(sites=_site_infos(body.get("sites"))))

    @app.route("/commands/unload", methods=["POST"])
    def cmd_unload(self, request: Any) -> bytes:
        _object_body(request)
        return self._command(request, "unload", m.Unload())

    @app.route("/commands/reset", methods=["POST"])
    def cmd_reset(self, request: Any) -> bytes:
        _object_body(request)
        return self._command(request, "reset", m.Reset())

    # -- alarms and production figures (protocol §15) ------------------------------------

    @app.route("/alarms", methods=["GET"])
    def alarms(self, request: Any) -> bytes:
        cell = self.cell
        held = cell.alarms.held()
        return _send(request, {"lot_number": cell.lot_number, "alarms": cell.alarms.alarms(),
                               "held": held.id if held is not None else None})

    @app.route("/alarms/<alarm_id>/release", methods=["POST"])
    def release_alarm(self, request: Any, alarm_id: str) -> bytes:
        if not alarm_id.isdigit() or len(alarm_id) > 9:
            raise ApiError(404, "not-found", f"alarm {alarm_id!r}: ids are positive integers")
        body = _object_body(request)
        try:
            released = self.cell.release_alarm(int(alarm_id), body.get("operator"),
                                               body.get("comment"))
        except AlarmError as e:
            code = {400: "bad-request", 404: "not-found", 409: "conflict"}.get(e.status, "error")
            raise ApiError(e.status, code, str(e)) from None
        return _send(request, released)

    # -- lot history (protocol §15.3) ------------------------------------------------------

    def _history(self) -> Any:
        history = getattr(self.cell, "history", None)
        if history is None or history.db is None:
            why = f": {history.problem}" if history is not None and history.problem else ""
            raise ApiError(503, "no-history", f"the lot history is not available{why}")
        return history.db

    @app.route("/lots", methods=["GET"])
    def lots(self, request: Any) -> bytes:
        db = self._history()
        args = {k.decode("utf-8", "replace"): v[-1].decode("utf-8", "replace")
                for k, v in (request.args or {}).items()}
        unknown = sorted(set(args) - {"part_type", "limit", "before"})
        if unknown:
            raise ApiError(400, "bad-request", f"unknown query parameter(s) {unknown}; "
                           "known: part_type, limit, before")
        kw: dict[str, Any] = {}
        for name in ("limit", "before"):
            if name in args:
                if not args[name].isdigit() or len(args[name]) > 9:
                    raise ApiError(400, "bad-request",
                                   f"{name} must be a positive integer, got {args[name]!r}")
                kw[name] = int(args[name])
        if "part_type" in args:
            kw["part_type"] = args["part_type"]
        try:
            rows = db.lots(**kw)
        except ValueError as e:
            raise ApiError(400, "bad-request", str(e)) from None
        more = len(rows) == kw.get("limit", 50) and rows
        return _send(request, {"lots": rows, "next": rows[-1]["id"] if more else None})

    def _lot_id(self, lot_id: str) -> int:
        if not lot_id.isdigit() or len(lot_id) > 12:
            raise ApiError(404, "not-found", f"lot {lot_id!r}: ids are positive integers")
        return int(lot_id)

    @app.route("/lots/<lot_id>", methods=["GET"])
    def lot_summary(self, request: Any, lot_id: str) -> bytes:
        row = self._history().lot(self._lot_id(lot_id))
        if row is None:
            raise ApiError(404, "not-found", f"lot {lot_id}: not in the lot history")
        return _send(request, row)

    @app.route("/lots/<lot_id>/stdf", methods=["GET"])
    def lot_stdf(self, request: Any, lot_id: str) -> Any:
        path = self._history().datalog_path(self._lot_id(lot_id))
        if path is None:
            raise ApiError(404, "not-found", f"lot {lot_id}: not in the lot history")
        if not os.path.isfile(path):
            raise ApiError(404, "not-found", f"lot {lot_id}: datalog {os.path.basename(path)} "
                           "is no longer on disk")
        try:
            fileobj = open(path, "rb")
            size = os.fstat(fileobj.fileno()).st_size
        except OSError as e:
            raise ApiError(404, "not-found", f"lot {lot_id}: datalog cannot be read: "
                           f"{e.strerror}") from None
        name = os.path.basename(path).replace('"', "")
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(size).encode("ascii"))
        request.setHeader(b"content-disposition",
                          f'attachment; filename="{name}"'.encode("utf-8", "replace"))
        # streamed in chunks by a pull producer: a large datalog never sits in memory
        d = FileSender().beginFileTransfer(fileobj, request)

        def done(result: Any) -> bytes:
            fileobj.close()
            return b""

        return d.addBoth(done)

    @app.route("/production", methods=["GET"])
    def production(self, request: Any) -> bytes:
        return _send(request, self.cell.production.figures())


def _job_dict(job: Any) -> dict | None:
    if job is None:
        return None
    out: dict[str, Any] = {}
    for name in ("lot_number", "sblot_id", "part_typ", "pkg_typ", "tst_temp", "user_txt",
                 "testapp_script_path", "cwd", "path"):
        out[name] = getattr(job, name, None)
    out["testapp_script_args"] = list(getattr(job, "testapp_script_args", ()) or ())
    out["bins"] = [
        {"sbin": b.sbin, "hbin": b.hbin, "name": b.name, "group": b.group,
         "description": b.description}
        for b in (getattr(job, "bins", ()) or ())
    ]
    return out


# -- /metrics ------------------------------------------------------------------------------

#: Upper bounds (seconds) of the cycle-time histogram buckets.
CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)








class PrometheusMetrics:
    """Collects what the cell does not count itself (the cycle-time histogram) and renders
    the text exposition format 0.0.4."""

    def __init__(self, cell: Cell, buckets: tuple[float, ...] = CYCLE_BUCKETS) -> None:
        self.cell = cell
        self.buckets = tuple(sorted(buckets))
        self.bucket_counts = [0] * len(self.buckets)
        self.cycle_count = 0
        self.cycle_sum = 0.0
        cell.subscribe(self._event)

    def _event(self, kind: str, data: Any) -> None:
        if kind == "part":
            self.observe_cycle(data)

    def observe_cycle(self, seconds: Any) -> None:
        """Record one completed handler cycle of ``seconds``."""
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            return
        if value != value or value < 0:
            return
        self.cycle_count += 1
        self.cycle_sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.bucket_counts[i] += 1

    def render(self) -> str:
        cell = self.cell
        mt = cell.metrics
        status = cell.status()
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for label_set, value in samples:
                lines.append(f"{name}{label_set} {number(value)}")

        metric("ate_parts_total", "counter", "Site results accepted (one per site and part).",
               [("", mt.parts)])
        metric("ate_cycles_total", "counter", "Completed handler cycles (next commands).",
               [("", mt.cycles)])
        metric("ate_commands_refused_total", "counter", "Commands refused with an error response.",
               [("", mt.commands_refused)])
        metric("ate_protocol_errors_total", "counter",
               "Malformed or unexpected MQTT messages by kind.",
               [(labels(kind=k), v) for k, v in sorted(mt.protocol_errors.items())])
        metric("ate_unexpected_results_total", "counter", "Test results that were not expected.",
               [("", mt.unexpected_results)])
        metric("ate_duplicate_results_total", "counter", "Duplicate test results ignored.",
               [("", mt.duplicate_results)])
        metric("ate_bad_records_total", "counter", "Result records the datalog could not write.",
               [("", mt.bad_records)])
        metric("ate_softerrors_total", "counter", "Entries into softerror.", [("", mt.softerrors)])
        metric("ate_mqtt_disconnects_total", "counter", "Lost broker connections.",
               [("", mt.mqtt_disconnects)])
        metric("ate_mqtt_connected", "gauge", "1 while connected to the broker.",
               [("", bool(status.get("connected")))])
        metric("ate_master_state", "gauge", "The master's external state (1 for the current one).",
               [(labels(state=status.get("state", "")), 1)])

        lot = cell.lot
        yields = lot.yields() if lot is not None else []
        bins = lot.bintable() if lot is not None else []
        metric("ate_lot_parts", "gauge", "Distinct parts tested in the current lot.",
               [("", lot.parts_tested if lot is not None else 0)])
        metric("ate_yield_parts", "gauge", "Parts per bin group and site (site -1: all sites).",
               [(labels(site=y.get("siteid"), group=y.get("name")), y.get("count", 0))
                for y in yields])
        metric("ate_yield_ratio", "gauge", "Share of parts per bin group and site (0..1).",
               [(labels(site=y.get("siteid"), group=y.get("name")),
                 float(y.get("value", 0.0)) / 100.0) for y in yields])
        bin_samples = []
        for row in bins:
            for sc in row.get("siteCounts", ()):
                bin_samples.append((labels(site=sc.get("siteId"), sbin=row.get("sBin"),
                                            hbin=row.get("hBin"), name=row.get("name"),
                                            group=row.get("type")), sc.get("count", 0)))
        metric("ate_bin_parts", "gauge", "Final parts per soft bin and site.", bin_samples)

        metric("ate_alarms_total", "counter", "Alarms raised, by rule kind and action (§15.2).",
               [(labels(kind=k, action=a), n)
                for (k, a), n in sorted(cell.alarms.counts.items())])
        metric("ate_lot_held", "gauge", "1 while a hold alarm holds the lot.",
               [("", cell.alarms.held() is not None)])

        lines.append("# HELP ate_cycle_seconds Handler cycle time, from next to the response.")
        lines.append("# TYPE ate_cycle_seconds histogram")
        for bound, count in zip(self.buckets, self.bucket_counts, strict=True):
            lines.append(f'ate_cycle_seconds_bucket{{le="{number(float(bound))}"}} {count}')
        lines.append(f'ate_cycle_seconds_bucket{{le="+Inf"}} {self.cycle_count}')
        lines.append(f"ate_cycle_seconds_sum {number(self.cycle_sum)}")
        lines.append(f"ate_cycle_seconds_count {self.cycle_count}")
        return "\n".join(lines) + "\n" + cell.production.metrics_text()


class MetricsResource(Resource):
    """``GET /metrics``: Prometheus text format 0.0.4."""

    isLeaf = True
    log = Logger(namespace="ate.web.metrics")

    def __init__(self, metrics: PrometheusMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        try:
            body = self.metrics.render().encode("utf-8")
        except Exception:
            self.log.failure("rendering /metrics failed")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"internal error rendering metrics\n"
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return body
