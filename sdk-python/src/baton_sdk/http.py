"""HTTP requests and responses (`Plugin.on_http`), and the connect request."""

import json as _json
from urllib.parse import parse_qsl

from . import _wit
from .frame import dumps


def _header(headers, name):
    name = name.lower()
    for key, value in headers:
        if key == name:
            return value
    return None


def query_param(query, name):
    """The first value of `name` in a query string (decoded), or None."""
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            return value
    return None


class HttpRequest:
    """`method` (upper-case), `path` (after /t/{tenant}/{plugin}, from "/"),
    `query` (without "?"), `headers` (list of (lower-case name, value)),
    `body` (bytes)."""

    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method="GET", path="/", query="", headers=(), body=b""):
        self.method = method
        self.path = path
        self.query = query
        self.headers = list(headers)
        self.body = bytes(body)

    @classmethod
    def from_wit(cls, r):
        return cls(r.method, r.path, r.query, r.headers, r.body)

    def header(self, name):
        return _header(self.headers, name)

    def query_param(self, name):
        return query_param(self.query, name)

    @property
    def segments(self):
        """The path's non-empty segments: "/a/b" -> ["a", "b"]."""
        return [s for s in self.path.split("/") if s]

    def text(self):
        return self.body.decode()

    def json(self):
        return _json.loads(self.body)

    def __repr__(self):
        return f"HttpRequest({self.method} {self.path}?{self.query})"


class HttpResponse:
    """`status`, `headers` (list of (name, value)), `body` (bytes)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status=200, headers=(), body=b""):
        self.status = int(status)
        self.headers = list(headers)
        self.body = body.encode() if isinstance(body, str) else bytes(body)

    @classmethod
    def text(cls, status, text):
        return cls(status, [("content-type", "text/plain; charset=utf-8")], text.encode())

    @classmethod
    def json(cls, status, value):
        return cls(status, [("content-type", "application/json")], dumps(value).encode())

    def to_wit(self):
        return _wit.imports("types").HttpResponse(self.status, self.headers, self.body)

    def __repr__(self):
        return f"HttpResponse({self.status})"


def to_wit_response(response):
    """Accepts an `HttpResponse`, the bindings' own, or a JSON value (200)."""
    if isinstance(response, HttpResponse):
        return response.to_wit()
    types = _wit.imports("types")
    if isinstance(response, types.HttpResponse):
        return response
    return HttpResponse.json(200, response).to_wit()


class ConnectRequest:
    """A client opening a session: `tenant`, `path`, `query`, `headers`, and
    `resumed` (True when the host re-announces an open session to a fresh
    instance after a crash)."""

    __slots__ = ("tenant", "path", "query", "headers", "resumed")

    def __init__(self, tenant="", path="/", query="", headers=(), resumed=False):
        self.tenant = tenant
        self.path = path
        self.query = query
        self.headers = list(headers)
        self.resumed = resumed

    @classmethod
    def from_wit(cls, r):
        return cls(r.tenant, r.path, r.query, r.headers, r.resumed)

    def header(self, name):
        return _header(self.headers, name)

    def query_param(self, name):
        return query_param(self.query, name)

    def __repr__(self):
        return f"ConnectRequest({self.tenant} {self.path}?{self.query}, resumed={self.resumed})"
