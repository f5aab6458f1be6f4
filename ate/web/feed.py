"""The websocket feed at ``/ws``: the MSCT web UI contract (protocol.md §11.2-11.6).

:class:`Feed` subscribes to the cell, turns its events into UI messages and fans them out
to every connected client.  Each broadcast is encoded once (``prepareMessage``) and the
same frame is sent to all clients.  Every client's output is bounded: once its transport
asks us to pause (the socket buffers are full) we count what is still queued for it, and
a client whose backlog exceeds ``max_buffer`` bytes is dropped with a log line, so a slow
or dead browser never delays the others or the reactor.

Commands from the UI (§11.5) go to the cell; replies go to the sender only.  Refused or
invalid commands become a WARNING log entry naming the command and the reason (§11.6);
the connection always stays open.

All JSON sent is strict: ``NaN``/``Infinity``/``-Infinity`` become ``"nan"``/``"inf"``/
``"-inf"`` (§11.4).  Time comes from the injected clock (timers) and ``wallclock`` (the
status ``systemTime``).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, cast

import txaio
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime, ITransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ate.protocol import messages as m

if TYPE_CHECKING:
    from ate.master.cell import Cell

__all__ = ["Feed", "FeedProtocol", "strict_json", "sanitize", "encode_results",
           "DEFAULT_MAX_BUFFER", "MAX_RESULTS_BYTES", "MAX_UI_MESSAGE"]

#: the status tick (1 s) sends the production figures (protocol §15.4, ours) every Nth time
PRODUCTION_EVERY = 2
DEFAULT_MAX_BUFFER = 4 * 1024 * 1024
#: The most bytes of results one ``testresults`` message carries: the newest results
#: that fit (protocol §11.3 allows up to 1000; with large results that is many MB).
MAX_RESULTS_BYTES = 8 * 1024 * 1024
#: The largest websocket message (and frame) accepted from a UI, in bytes.  UI commands
#: are a few hundred bytes; a larger message fails the connection (close code 1009) as
#: soon as its frame header announces it, before its payload is buffered.
MAX_UI_MESSAGE = 64 * 1024
#: States in which a lot is open, so ``lotdata`` goes to a new client (§11.2).
_LOT_OPEN = frozenset({"loading", "ready", "testing", "unloading"})


# -- strict JSON ---------------------------------------------------------------------------


def sanitize(obj: Any) -> Any:
    """A copy of ``obj`` with non-finite floats replaced by ``"nan"``, ``"inf"``, ``"-inf"``."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {k: sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    return obj


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def strict_json(obj: Any) -> bytes:
    """Encode ``obj`` as strict JSON (UTF-8); non-finite floats become strings (§11.4).

    The common case (no non-finite float) costs one ``json.dumps``; only a message that
    holds one is copied and sanitised.
    """
    try:
        text = json.dumps(obj, allow_nan=False, separators=(",", ":"), default=_default)
    except ValueError:
        text = json.dumps(sanitize(obj), allow_nan=False, separators=(",", ":"),
                          default=_default)
    return text.encode("utf-8")


def _message(kind: str, payload: Any) -> dict:
    return {"type": kind, "payload": payload}


def encode_results(results: list, max_bytes: int) -> tuple[bytes, int]:
    """The strict JSON array of the newest ``results`` (oldest first) that fits in
    ``max_bytes``, and how many older ones were left out.  The newest result is always
    included, whatever its size."""
    parts: list[bytes] = []
    total = 2
    for records in reversed(results):
        data = strict_json(records)
        total += len(data) + 1
        if parts and total > max_bytes:
            break
        parts.append(data)
    parts.reverse()
    return b"[" + b",".join(parts) + b"]", len(results) - len(parts)


# -- per-client backpressure ---------------------------------------------------------------


@implementer(IPushProducer)
class _Backlog:
    """Registered as the transport's push producer: tells us when the socket is full.

    While paused, every byte we still write is counted; ``resumeProducing`` (the
    transport drained its buffer) resets the count.
    """

    def __init__(self) -> None:
        self.paused = False
        self.pending = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pending = 0

    def stopProducing(self) -> None:
        self.paused = True


class FeedProtocol(WebSocketServerProtocol):
    """One UI connection.  All logic lives in :class:`Feed`; this only forwards events."""

    transport: ITransport  # set by makeConnection, before any frame is sent

    # not named ``log``: autobahn logs every frame through self.log, and a Twisted Logger
    # there would format and write each one (bench/feed.py); txaio's logger drops them
    _log = Logger(namespace="ate.web.feed")
    feed: "Feed"

    def onConnect(self, request: Any) -> None:
        try:
            self.connectionid = str(uuid.uuid1())
            self.peer_text = str(getattr(request, "peer", "?"))
            self.backlog = _Backlog()
            self.dropped = False
        except Exception:
            self._log.failure("websocket onConnect failed")
            raise
        return None

    def onOpen(self) -> None:
        try:
            transport = cast(IConsumer, self.transport)  # a TCP transport: a consumer too
            try:
                # twisted.web's HTTP channel was the producer of this transport; the
                # socket is ours now, so we watch its buffer instead.
                transport.unregisterProducer()
            except Exception:
                pass
            try:
                transport.registerProducer(self.backlog, True)
            except Exception:
                self._log.failure("websocket: cannot watch the output buffer of {peer}",
                                 peer=self.peer_text)
            self.feed.client_opened(self)
        except Exception:
            self._log.failure("websocket onOpen failed")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            self.feed.client_message(self, payload, isBinary)
        except Exception:
            self._log.failure("websocket onMessage failed")

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        try:
            if getattr(self, "wasMaxMessagePayloadSizeExceeded", False) or getattr(
                    self, "wasMaxFramePayloadSizeExceeded", False):
                self.feed.refused_message(self)
            self.feed.client_closed(self)
        except Exception:
            self._log.failure("websocket onClose failed")

    # -- sending -----------------------------------------------------------------------

    def send_frame_bytes(self, nbytes: int) -> bool:
        """Account for ``nbytes`` about to be written; False if the client must go."""
        if self.dropped:
            return False
        backlog = self.backlog
        if backlog.paused:
            backlog.pending += nbytes
            if backlog.pending > self.feed.max_buffer:
                self.feed.drop(self, f"output backlog above {self.feed.max_buffer} bytes")
                return False
        return True

    def send_json(self, data: bytes) -> None:
        """Send one text message encoded for this client only.

        Prepared like a broadcast: ``sendMessage`` would apply the *incoming* message
        limit (``maxMessagePayloadSize``) to what we send, and a reply such as
        ``testresults`` is larger than any UI command."""
        if self.send_frame_bytes(len(data) + 10):
            self.sendPreparedMessage(self.feed.factory.prepareMessage(data))

    def send_prepared(self, prepared: Any) -> None:
        """Send a frame encoded once for all clients."""
        if self.send_frame_bytes(len(prepared.payloadHybi)):
            self.sendPreparedMessage(prepared)


# -- the feed ------------------------------------------------------------------------------


class Feed:
    """The UI feed: cell events in, websocket messages out.

    :param cell: the master's cell (see docs/internals.md; ``status()``, ``command()``,
        ``subscribe()``, ``lot``, ``logs`` …).
    :param clock: timers (status every ``status_interval``, batches every ``tick``).
    :param wallclock: the time shown as ``systemTime``.
    :param max_buffer: bytes a client may fall behind before it is dropped.
    """

    log = Logger(namespace="ate.web.feed")

    def __init__(
        self,
        cell: Cell,
        clock: IReactorTime,
        *,
        wallclock: Callable[[], float] = time.time,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        tick: float = 0.1,
        status_interval: float = 1.0,
        ping_interval: float | None = 10.0,
        coalesce: bool = False,
        flush_delay: float = 0.02,
        max_message: int = MAX_UI_MESSAGE,
        max_results_bytes: int = MAX_RESULTS_BYTES,
    ) -> None:
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise ValueError(f"max_buffer must be a positive integer, got {max_buffer!r}")
        if isinstance(max_message, bool) or not isinstance(max_message, int) or max_message < 1:
            raise ValueError(f"max_message must be a positive integer, got {max_message!r}")
        self.max_results_bytes = max_results_bytes
        # autobahn logs every frame at debug, formatting it even when nobody shows debug
        # (measured by bench/feed.py: about a third of the master's CPU with 50 clients)
        # bound at run time by txaio's framework choice (autobahn.twisted makes it)
        txaio.set_global_log_level("info")  # type: ignore[attr-defined]
        self.cell = cell
        self.clock = clock
        self.wallclock = wallclock
        self.max_buffer = max_buffer
        self.tick_interval = tick
        self.status_interval = status_interval
        self.clients: list[FeedProtocol] = []
        self.dropped = 0
        self._ticks = 0  # status ticks: every PRODUCTION_EVERY-th also sends the figures
        self._results_dirty = False
        self._status_dirty = False
        # coalesce: what happens within ``flush_delay`` goes to each client as one write,
        # and yield, bintable and status are computed once per flush, not per event (a
        # 16-site part is 16 testresults + yield + bintable + 2 statuses); the reference
        # pushes at its 1 s tick (protocol §11.2), so 20 ms is well inside the contract.
        # Measured with bench/feed.py.
        self.coalesce = coalesce
        self.flush_delay = flush_delay
        self._outbox: list[bytes | tuple[str, Any]] = []  # frames, or (kind, payload) to encode
        self._flush_call: Any = None
        self.factory = WebSocketServerFactory()
        self.factory.protocol = self._protocol_class()
        self.max_message = max_message
        #: UI connections failed because they sent a message larger than max_message.
        self.refused = 0
        options: dict[str, Any] = {"autoFragmentSize": 0,
                                   "maxMessagePayloadSize": max_message,
                                   "maxFramePayloadSize": max_message}
        if ping_interval:
            options.update(autoPingInterval=ping_interval, autoPingTimeout=ping_interval * 3)
        self.factory.setProtocolOptions(**options)
        self._status_loop = LoopingCall(self._status_tick)
        self._status_loop.clock = clock
        self._tick_loop = LoopingCall(self._tick)
        self._tick_loop.clock = clock
        cell.subscribe(self._cell_event)

    def _protocol_class(self) -> type[FeedProtocol]:
        feed = self

        class _Bound(FeedProtocol):
            pass

        _Bound.feed = feed
        return _Bound

    def resource(self) -> WebSocketResource:
        """The ``/ws`` resource to mount in a twisted.web tree."""
        return WebSocketResource(self.factory)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the status timer and the batch tick (idempotent)."""
        if not self._status_loop.running:
            self._status_loop.start(self.status_interval, now=False).addErrback(
                lambda f: self.log.failure("status timer failed", f))
        if not self._tick_loop.running:
            self._tick_loop.start(self.tick_interval, now=False).addErrback(
                lambda f: self.log.failure("feed tick failed", f))

    def stop(self) -> None:
        """Stop the timers, close every client and leave the cell."""
        for loop in (self._status_loop, self._tick_loop):
            if loop.running:
                loop.stop()
        for client in list(self.clients):
            try:
                client.sendClose(1000, "master stopping")
            except Exception:
                self.log.failure("websocket: closing {peer} failed", peer=client.peer_text)
        unsubscribe = getattr(self.cell, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(self._cell_event)

    # -- messages ----------------------------------------------------------------------

    def status_payload(self) -> dict:
        """The UI ``status`` payload (§11.3) with ate-master's additions."""
        st = self.cell.status()
        payload = {
            "device_id": st.get("device_id", ""),
            "systemTime": time.strftime("%b %d %Y %H:%M:%S", time.localtime(self.wallclock())),
            "sites": list(st.get("sites") or []),
            "state": st.get("state", ""),
            "error_message": st.get("error_message") or "",
            "env": st.get("environment", ""),
            "lot_number": st.get("lot_number") or "",
            "handler": st.get("handler", ""),
            "program": st.get("program") or "",
            # additions for our own UI (the MSCT UI ignores unknown keys)
            "site_states": st.get("site_states") or {},
            "parts": st.get("parts", 0),
            "connected": bool(st.get("connected", False)),
        }
        return payload

    def masterconfiguration(self) -> dict:
        cfg = self.cell.config
        mqtt = getattr(cfg, "mqtt", None)
        return {
            "broker_host": getattr(mqtt, "host", getattr(cfg, "broker_host", "")),
            "broker_port": getattr(mqtt, "port", getattr(cfg, "broker_port", 1883)),
            "device_id": cfg.device_id,
            "sites": list(cfg.sites),
            "handler": cfg.handler_id,
            "environment": cfg.environment,
            "jobsource": cfg.jobsource,
            "jobformat": cfg.jobformat,
        }

    def _results(self) -> list:
        lot = self.cell.lot
        return list(lot.last_results()) if lot is not None else []

    def _send_results(self, client: FeedProtocol, results: list) -> None:
        """``testresults`` to one client: the newest results within max_results_bytes."""
        array, omitted = encode_results(results, self.max_results_bytes)
        if omitted:
            self.log.info("testresults to {peer}: the newest {kept} of {total} results "
                          "(at most {limit} bytes)", peer=client.peer_text,
                          kept=len(results) - omitted, total=len(results),
                          limit=self.max_results_bytes)
        client.send_json(b'{"type":"testresults","payload":' + array + b"}")

    # -- broadcasting ------------------------------------------------------------------

    def broadcast(self, kind: str, payload: Any) -> None:
        """Encode ``{"type": kind, "payload": payload}`` once and send it to every client."""
        if not self.clients:
            return
        if self.coalesce:
            # encoded at the flush, off the handler's path (a testresult comes before the
            # master's next response; bench/feed.py: about 20 us a frame)
            self._outbox.append((kind, payload))
            self._schedule_flush()
            return
        prepared = self.factory.prepareMessage(strict_json(_message(kind, payload)))
        for client in list(self.clients):
            try:
                client.send_prepared(prepared)
            except Exception:
                self.log.failure("websocket send to {peer} failed", peer=client.peer_text)
                self.drop(client, "send failed")

    def _schedule_flush(self) -> None:
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(self.flush_delay, self.flush)

    def flush(self) -> None:
        """Send the coalesced broadcasts: one write per client."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self.coalesce and self.clients:
            if self._results_dirty:
                self._send_batch()
            if self._status_dirty:
                self._status_dirty = False
                self._outbox.append(self.factory.prepareMessage(
                    strict_json(_message("status", self.status_payload()))).payloadHybi)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()  # scheduled again by the batch above
        self._flush_call = None
        queued, self._outbox = self._outbox, []
        if not queued:
            return
        frames = [f if isinstance(f, bytes) else
                  self.factory.prepareMessage(strict_json(_message(*f))).payloadHybi
                  for f in queued]
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        for client in list(self.clients):
            try:
                if client.send_frame_bytes(len(data)):
                    client.transport.write(data)
            except Exception:
                self.log.failure("websocket send to {peer} failed", peer=client.peer_text)
                self.drop(client, "send failed")

    def send_to(self, client: FeedProtocol, kind: str, payload: Any) -> None:
        """Send one message to one client (replies, the connection start)."""
        client.send_json(strict_json(_message(kind, payload)))

    def drop(self, client: FeedProtocol, reason: str) -> None:
        """Disconnect ``client`` at once (abort), e.g. when it falls too far behind."""
        if client.dropped:
            return
        client.dropped = True
        self.dropped += 1
        if client in self.clients:
            self.clients.remove(client)
        self.log.warn("websocket client {peer} dropped: {reason}", peer=client.peer_text,
                      reason=reason)
        try:
            client.dropConnection(abort=True)
        except Exception:
            self.log.failure("websocket: dropping {peer} failed", peer=client.peer_text)

    def _send_batch(self) -> None:
        """One ``yield`` and one ``bintable`` for everything since the last batch."""
        self._results_dirty = False
        lot = self.cell.lot
        if lot is None:
            return
        self.broadcast("yield", lot.yields())
        self.broadcast("bintable", lot.bintable())

    # -- cell events -------------------------------------------------------------------

    def _cell_event(self, kind: str, data: Any) -> None:
        if not self.clients:
            # nobody to tell: a new client gets the full picture when it connects (§11.2)
            self._status_dirty = self._results_dirty = False
            return
        if self.coalesce and kind in ("status", "sites", "part"):
            if kind == "part":
                self._results_dirty = True
            else:
                self._status_dirty = True
            self._schedule_flush()
            return
        if kind == "status":
            self._status_dirty = False
            self.broadcast("status", self.status_payload())
        elif kind == "sites":
            self._status_dirty = True
        elif kind == "testresult":
            self.broadcast("testresult", data)
            self._results_dirty = True
        elif kind == "part":
            self._send_batch()
        elif kind == "lotdata":
            if data is not None:
                self.broadcast("lotdata", data)
        elif kind == "bintable":
            self.broadcast("bintable", list(data) if data is not None else [])
        elif kind == "usersettings":
            self.broadcast("usersettings", data)
        elif kind == "alarm":
            self.broadcast("alarm", data)  # ours (§15.2); the MSCT UI ignores the type
        elif kind == "lot":
            # a new lot: clear the UI's results (empty lists are allowed, §11.4)
            lot = self.cell.lot
            self.broadcast("yield", lot.yields() if lot is not None else [])
        # "finalised" and unknown kinds carry nothing for the UI

    def _status_tick(self) -> None:
        self._status_dirty = False
        self.broadcast("status", self.status_payload())
        self._ticks += 1
        if self._ticks % PRODUCTION_EVERY == 0 and self.clients:
            self.broadcast("production", self.cell.production.figures())

    def _tick(self) -> None:
        if self._results_dirty:
            self._send_batch()
        if self._status_dirty:
            self._status_dirty = False
            self.broadcast("status", self.status_payload())
        logs = self.cell.logs
        if logs is not None:
            new = logs.drain_new()
            if new:
                self.broadcast("logs", new)

    # -- client events -----------------------------------------------------------------

    def client_opened(self, client: FeedProtocol) -> None:
        """The connection start of §11.2, to this client only, then join the broadcast."""
        self.flush()  # what was broadcast before it joined is not its business
        self.send_to(client, "connectionid", {"connectionid": client.connectionid})
        self.send_to(client, "masterconfiguration", self.masterconfiguration())
        self.send_to(client, "usersettings", self.cell.usersettings())
        results = self._results()
        if results:
            self._send_results(client, results)
        lot = self.cell.lot
        if lot is not None:
            self.send_to(client, "yield", lot.yields())
            self.send_to(client, "bintable", lot.bintable())
        status = self.status_payload()
        if status["state"] in _LOT_OPEN:
            lotdata = self.cell.lotdata()
            if lotdata is not None:
                self.send_to(client, "lotdata", lotdata)
        self.send_to(client, "status", status)
        if not client.dropped:
            self.clients.append(client)
        self.log.info("websocket client {peer} connected ({n} connected)",
                      peer=client.peer_text, n=len(self.clients))

    def refused_message(self, client: FeedProtocol) -> None:
        """``client`` sent a message above ``max_message`` bytes: its connection failed."""
        self.refused += 1
        self.log.warn("websocket client {peer} dropped: it sent a message larger than "
                      "{limit} bytes", peer=getattr(client, "peer_text", "?"),
                      limit=self.max_message)

    def client_closed(self, client: FeedProtocol) -> None:
        if client in self.clients:
            self.clients.remove(client)
            self.log.info("websocket client {peer} disconnected", peer=client.peer_text)

    def client_message(self, client: FeedProtocol, payload: bytes, is_binary: bool) -> None:
        """One frame from the UI: parse, then run the command (§11.5)."""
        try:
            msg = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self.log.warn("websocket: frame from {peer} is not JSON, ignored: {error}",
                          peer=client.peer_text, error=str(e)[:200])
            return
        except RecursionError:
            msg = None
            too_deep = True
        else:
            too_deep = m.json_too_deep(msg)
        if too_deep:
            self.log.warn("websocket: frame from {peer} is nested deeper than {limit} levels, "
                          "ignored", peer=client.peer_text, limit=m.MAX_JSON_DEPTH)
            return
        if not isinstance(msg, dict):
            self.log.warn("websocket: frame from {peer} is not a JSON object, ignored",
                          peer=client.peer_text)
            return
        if msg.get("type") != "cmd":
            self.log.debug("websocket: message of type {type!r} ignored", type=msg.get("type"))
            return
        command = msg.get("command")
        handler = self._COMMANDS.get(command) if isinstance(command, str) else None
        if handler is None:
            self._refused(str(command)[:60], "unknown command")
            return
        handler(self, client, msg)

    # -- UI commands -------------------------------------------------------------------

    def _refused(self, command: str, reason: str) -> None:
        """§11.6: a refused or invalid UI command is a WARNING naming command and reason."""
        prefix = f"{command} refused"
        text = reason if reason.startswith(prefix) else f"{prefix}: {reason}"
        self.log.warn("{text}", text=text, ate_command=command)

    def _run(self, command: str, msg: Any) -> None:
        """Run a machine command; the cell logs its own refusals (cell.refusal_response)."""
        response = self.cell.command(msg, "ui")
        if isinstance(response, m.ErrorResponse):
            self.log.debug("ui {command} refused: {reason}", command=command,
                           reason=response.message)

    def _cmd_load(self, client: FeedProtocol, msg: dict) -> None:
        lot_number = msg.get("lot_number")
        if not isinstance(lot_number, str) or not lot_number.strip():
            self._refused("load", f"lot_number must be a non-empty string, got {lot_number!r}")
            return
        self._run("load", m.Load(lot_number=lot_number.strip()))

    def _cmd_next(self, client: FeedProtocol, msg: dict) -> None:
        self._run("next", m.Next(sites=None))

    def _cmd_unload(self, client: FeedProtocol, msg: dict) -> None:
        self._run("unload", m.Unload())

    def _cmd_reset(self, client: FeedProtocol, msg: dict) -> None:
        self._run("reset", m.Reset())

    def _cmd_usersettings(self, client: FeedProtocol, msg: dict) -> None:
        items = msg.get("payload")
        if not isinstance(items, list):
            self._refused("usersettings", f"payload must be a list of settings, got {items!r}")
            return
        try:
            self.cell.update_settings(items)
        except ValueError as e:
            self._refused("usersettings", str(e))

    def _cmd_setloglevel(self, client: FeedProtocol, msg: dict) -> None:
        try:
            self.cell.set_loglevel(msg.get("level"))
        except ValueError as e:
            self._refused("setloglevel", str(e))

    def _cmd_getresults(self, client: FeedProtocol, msg: dict) -> None:
        self._send_results(client, self._results())

    def _cmd_getlogs(self, client: FeedProtocol, msg: dict) -> None:
        logs = self.cell.logs
        self.send_to(client, "logs", logs.entries(newest_first=True) if logs is not None else [])

    def _cmd_getlogfile(self, client: FeedProtocol, msg: dict) -> None:
        logs = self.cell.logs
        if logs is None:
            self._refused("getlogfile", "the master keeps no log")
            return
        self.send_to(client, "logfile", logs.logfile())

    def _cmd_binmap(self, client: FeedProtocol, msg: dict) -> None:
        try:
            self.cell.bin_map(msg.get("sBin"), msg.get("hBin"))
        except ValueError as e:
            self._refused("binMap", str(e))

    _COMMANDS: dict[str, Callable[["Feed", FeedProtocol, dict], None]] = {
        "load": _cmd_load,
        "next": _cmd_next,
        "unload": _cmd_unload,
        "reset": _cmd_reset,
        "usersettings": _cmd_usersettings,
        "setloglevel": _cmd_setloglevel,
        "getresults": _cmd_getresults,
        "getlogs": _cmd_getlogs,
        "getlogfile": _cmd_getlogfile,
        "binMap": _cmd_binmap,
    }
