"""The master's web site: static operator UI, ``/ws``, ``/api/v1`` and ``/metrics`` on one port.

Access (protocol.md §11.1): on a loopback address everything is open.  On any other address
every request except read-only ``GET``/``HEAD`` requests needs the configured token, given
as ``Authorization: Bearer <token>``; so does the websocket upgrade at ``/ws`` (its
commands change state), which may also give it as ``?token=<token>`` because a browser
cannot set a header on a websocket.  No other route accepts ``?token=``.  When a token is
configured, the log routes (``/api/v1/logs…``) need it on any address.  Without a
configured token the master refuses to listen on a non-loopback address
(:func:`check_access_config`).

The access log never shows a query string (``?<redacted>``, also in the Referer), so a
token given as ``?token=`` never reaches a log.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IAccessLogFormatter
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from zope.interface import provider

from ate.web.api import Api, MetricsResource, PrometheusMetrics
from ate.web.feed import Feed

__all__ = [
    "STATIC_ROOT", "UI_ROUTES", "make_site", "web_service", "check_access_config",
    "is_loopback", "WebService", "access_log_line", "redact_uri",
]

STATIC_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: The UI's client-side routes, all answered with index.html (protocol.md §11.1).
UI_ROUTES = frozenset({b"", b"information", b"control", b"records", b"logging", b"bin",
                       b"history"})
_READ_ONLY = frozenset({b"GET", b"HEAD"})
_NO_INDEX = (b"index.html not found: set webui_root_path in the master config to the "
             b"directory of the web UI\n")

log = Logger(namespace="ate.web.site")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_access_config(cfg: Any) -> None:
    """Refuse (ValueError) to listen on a non-loopback address without ``webui_token``."""
    host = getattr(cfg, "webui_host", "127.0.0.1") or ""
    token = getattr(cfg, "webui_token", None)
    if not is_loopback(host) and not token:
        raise ValueError(
            f"webui_host {host!r} is not a loopback address: set webui_token in the master "
            "config (clients then send 'Authorization: Bearer <token>'), or listen on "
            "127.0.0.1"
        )


def _request_token(request: Any, *, allow_query: bool = False) -> str | None:
    """The bearer token of the request; ``?token=`` only with ``allow_query`` (``/ws``)."""
    auth = request.getHeader(b"authorization")
    if isinstance(auth, bytes):
        auth = auth.decode("latin-1")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if not allow_query:
        return None
    values = request.args.get(b"token") if request.args else None
    if values:
        return values[0].decode("utf-8", "replace")
    return None


def redact_uri(uri: bytes) -> bytes:
    """``uri`` with its query string replaced by ``<redacted>`` (it may hold a token)."""
    path, sep, _query = uri.partition(b"?")
    return path + b"?<redacted>" if sep else path


class _RedactedRequest:
    """The request as the access log sees it: no query string in the URI or Referer."""

    def __init__(self, request: Any) -> None:
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    @property
    def uri(self) -> bytes:
        return redact_uri(self._request.uri)

    def getHeader(self, name: bytes) -> Any:
        value = self._request.getHeader(name)
        if value and name.lower() == b"referer":
            return redact_uri(value if isinstance(value, bytes) else value.encode("latin-1"))
        return value


@provider(IAccessLogFormatter)
def access_log_line(timestamp: str, request: Any) -> str:
    """The combined log format line of ``request``, without any query string."""
    return combinedLogFormatter(timestamp, _RedactedRequest(request))


class _JsonError(Resource):
    isLeaf = True

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__()
        self.status, self.code, self.message = status, code, message

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        if self.status == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="ate-master"')
        return json.dumps({"error": self.code, "message": self.message}).encode("utf-8")


_CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".json": b"application/json",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".txt": b"text/plain; charset=utf-8",
    ".map": b"application/json",
    ".woff2": b"font/woff2",
}
_MAX_STATIC = 16 * 1024 * 1024


class _FileBytes(Resource):
    """One static file, read whole per request (the UI's files are small)."""

    isLeaf = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def render_GET(self, request: Any) -> bytes:
        ext = os.path.splitext(self.path)[1].lower()
        try:
            if os.path.getsize(self.path) > _MAX_STATIC:
                raise OSError("file too large to serve")
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            log.warn("static file {path} not served: {e}", path=self.path, e=e)
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found\n"
        request.setHeader(b"content-type", _CONTENT_TYPES.get(ext, b"application/octet-stream"))
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return data

    render_HEAD = render_GET


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"not found\n"


class _StaticDir(Resource):
    """Files below ``root``; no directory listings, nothing outside ``root``."""

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = os.path.realpath(root)

    def getChild(self, path: bytes, request: Any) -> Resource:
        segments = [path] + list(request.postpath)
        request.postpath[:] = []
        try:
            names = [seg.decode("utf-8") for seg in segments]
        except UnicodeDecodeError:
            return _NotFound()
        if any(not n or n.startswith(".") or "/" in n or "\\" in n or "\0" in n
               for n in names):
            return _NotFound()
        full = os.path.realpath(os.path.join(self.root, *names))
        if not full.startswith(self.root + os.sep) or not os.path.isfile(full):
            return _NotFound()
        return _FileBytes(full)


class _Root(Resource):
    """Dispatches the first path segment and enforces the access rule."""

    def __init__(self, *, static: Resource, index: Resource, ws: IResource, api: Resource,
                 metrics: Resource, token: str | None, require_token: bool) -> None:
        super().__init__()
        self.static = static
        self.index = index
        self.ws = ws
        self.api = api
        self.metrics = metrics
        self.token = token
        self.require_token = require_token

    def _denied(self, request: Any, segment: bytes) -> Resource | None:
        ws = segment == b"ws"
        if self.token and segment == b"api" and request.postpath[:2] == [b"v1", b"logs"]:
            pass  # the log routes need a configured token on any address
        elif not self.require_token or (not ws and request.method in _READ_ONLY):
            return None
        given = _request_token(request, allow_query=ws)
        if given is not None and self.token and hmac.compare_digest(
                given.encode("utf-8"), self.token.encode("utf-8")):
            return None
        method = request.method.decode("ascii", "replace")
        how = "send 'Authorization: Bearer <token>'" + (" or ?token=<token>" if ws else "")
        return _JsonError(401, "unauthorized",
                          f"{method} {request.path.decode('utf-8', 'replace')} needs the token: "
                          f"{how}")

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        denied = self._denied(request, path)
        if denied is not None:
            return denied
        if path in UI_ROUTES and not request.postpath:
            return self.index
        if path == b"ws" and not request.postpath:
            return self.ws
        if path == b"metrics" and not request.postpath:
            return self.metrics
        if path == b"api":
            if request.postpath and request.postpath[0] == b"v1":
                request.prepath.append(request.postpath.pop(0))
                return self.api
            return _JsonError(404, "not-found", "the API lives under /api/v1")
        return self.static.getChild(path, request)

    def render(self, request: Any) -> bytes:  # only reached for an empty first segment
        return self.index.render(request)


class _NoIndex(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return _NO_INDEX


def make_site(cell: Any, clock: IReactorTime, *, root: str | None = None,
              start: bool = True, max_buffer: int | None = None,
              wallclock: Any = None, coalesce: bool = False) -> Site:
    """The twisted.web ``Site`` of the master.

    :param root: the UI directory; default ``cell.config.webui_root_path`` or the shipped UI.
    :param start: start the feed's timers now (``web_service`` starts them with the service).
    The site carries ``site.feed``, ``site.api`` and ``site.metrics`` for the caller.
    """
    cfg = cell.config
    if root is None:
        root = getattr(cfg, "webui_root_path", None) or STATIC_ROOT
    if not os.path.isdir(root):
        raise ValueError(f"webui_root_path {root!r} is not a directory")
    feed_kwargs: dict[str, Any] = {}
    if max_buffer is not None:
        feed_kwargs["max_buffer"] = max_buffer
    if wallclock is not None:
        feed_kwargs["wallclock"] = wallclock
    feed = Feed(cell, clock, coalesce=coalesce, **feed_kwargs)
    api = Api(cell)
    metrics = PrometheusMetrics(cell)
    index_path = os.path.join(root, "index.html")
    static = _StaticDir(root)
    index: Resource = _FileBytes(index_path) if os.path.isfile(index_path) else _NoIndex()
    host = getattr(cfg, "webui_host", "127.0.0.1") or "127.0.0.1"
    token = getattr(cfg, "webui_token", None)
    resource = _Root(static=static, index=index, ws=feed.resource(), api=api.app.resource(),
                     metrics=MetricsResource(metrics), token=token,
                     require_token=not is_loopback(host))
    site = Site(resource, logFormatter=access_log_line)
    site.displayTracebacks = False
    site.feed = feed  # type: ignore[attr-defined]
    site.api = api  # type: ignore[attr-defined]
    site.metrics = metrics  # type: ignore[attr-defined]
    if start:
        feed.start()
    return site


class WebService(MultiService):
    """Listens with the site and runs the feed's timers while running."""

    def __init__(self, site: Site, endpoint: Any) -> None:
        super().__init__()
        self.site = site
        self.listener = StreamServerEndpointService(endpoint, site)
        self.listener.setServiceParent(self)

    def startService(self) -> None:
        self.site.feed.start()  # type: ignore[attr-defined]
        super().startService()

    def stopService(self) -> Any:
        self.site.feed.stop()  # type: ignore[attr-defined]
        return super().stopService()


def web_service(cell: Any, reactor: Any, config: Any) -> IService:
    """The web service for the tap: ``tcp:<webui_port>:interface=<webui_host>``.

    Raises ValueError (see :func:`check_access_config`) for an unsafe access config.
    """
    check_access_config(config)
    host = getattr(config, "webui_host", "127.0.0.1") or "127.0.0.1"
    port = int(getattr(config, "webui_port", 8081) or 8081)
    site = make_site(cell, reactor, root=getattr(config, "webui_root_path", None) or None,
                     start=False, coalesce=True)
    interface = host.replace(":", "\\:")
    endpoint = serverFromString(reactor, f"tcp:{port}:interface={interface}")
    return WebService(site, endpoint)
