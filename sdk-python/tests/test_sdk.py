"""Unit tests of baton_sdk on a plain CPython, with stand-ins for the bindings
componentize-py generates (`wit_world`, `componentize_py_types`).

    python3 -m unittest discover -s sdk-python/tests
"""

import enum
import json
import os
import sys
import types
import unittest
from dataclasses import dataclass

sys.dont_write_bytecode = True  # no __pycache__ in the source folders
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "plugins", "counter-py"))


# --- stand-ins for the generated bindings --------------------------------

def _module(module_name, **attrs):
    module = types.ModuleType(module_name)
    module.__dict__.update(attrs)
    sys.modules[module_name] = module
    return module


@dataclass(frozen=True)
class Err(Exception):
    value: object


_module("componentize_py_types", Err=Err)
_module("wit_world")
_module("wit_world.imports")


@dataclass
class Frame_Text:
    value: str


@dataclass
class Frame_Binary:
    value: bytes


@dataclass
class HttpRequest:
    method: str
    path: str
    query: str
    headers: list
    body: bytes


@dataclass
class HttpResponse:
    status: int
    headers: list
    body: bytes


@dataclass
class ConnectRequest:
    tenant: str
    path: str
    query: str
    headers: list
    resumed: bool


@dataclass
class Migration:
    id: str
    sql: str


@dataclass
class Error_UnknownSession:
    pass


class Level(enum.Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


SENT = []
LOGS = []
NOW = [1000]


def _send(session, frame):
    if session == 404:
        raise Err(Error_UnknownSession())
    SENT.append((session, frame))


_module(
    "wit_world.imports.types",
    Frame_Text=Frame_Text,
    Frame_Binary=Frame_Binary,
    HttpRequest=HttpRequest,
    HttpResponse=HttpResponse,
    ConnectRequest=ConnectRequest,
    Migration=Migration,
)
_module("wit_world.imports.session", send=_send, close=lambda s, c, r: None)
_module("wit_world.imports.log", Level=Level, log=lambda level, message: LOGS.append((level, message)))
_module("wit_world.imports.clock", now_ms=lambda: NOW[0])
_module("wit_world.imports.tenant", name=lambda: "acme")

import baton_sdk  # noqa: E402  (after the stand-ins)
from baton_sdk import state as state_mod  # noqa: E402
from baton_sdk._plugin import WitWorld  # noqa: E402

import app as counter  # noqa: E402  (plugins/counter-py/app.py)


def replies():
    out = [json.loads(f.value) for _, f in SENT]
    SENT.clear()
    return out


class StateHelper(unittest.TestCase):
    def test_layout_json_is_the_rust_sdks(self):
        class S(baton_sdk.VersionedState):
            LAYOUT = 3

            def __init__(self):
                self.n = 7

        raw = S().save()
        self.assertEqual(json.loads(raw), {"layout": 3, "data": {"n": 7}})
        self.assertEqual(S.restore(raw).n, 7)
        self.assertIsNone(S.restore(b""))

    def test_other_layouts_are_refused_by_default(self):
        class S(baton_sdk.VersionedState):
            LAYOUT = 1

        with self.assertRaisesRegex(baton_sdk.StateError, "reads state layout 1, not 2"):
            S.restore(state_mod.encode(2, {}))
        with self.assertRaisesRegex(baton_sdk.StateError, "not a baton state"):
            S.restore(b"not json")


class CounterPy(unittest.TestCase):
    def setUp(self):
        SENT.clear()
        LOGS.clear()
        self.world = baton_sdk.export(counter.Counter)()
        self.world.init("{}")

    def frame(self, session, text):
        self.world.on_frame(session, Frame_Text(text))

    def test_counts_and_raise_keeps_the_state(self):
        self.frame(7, "a")
        self.frame(7, "b")
        self.frame(7, "raise")
        self.frame(7, "c")
        self.world.on_frame(8, Frame_Binary(b"xyz"))
        self.assertEqual(
            replies(),
            [
                {"v": "py", "n": 1, "total": 1, "echo": "a"},
                {"v": "py", "n": 2, "total": 2, "echo": "b"},
                {"v": "py", "n": 3, "total": 3, "echo": "c"},
                {"v": "py", "n": 1, "total": 4, "echo": "3 bytes"},
            ],
        )
        self.assertEqual(len(LOGS), 1)
        self.assertEqual(LOGS[0][0], Level.ERROR)
        self.assertIn("a frame asked to raise", LOGS[0][1])

    def test_http_and_raise_becomes_err(self):
        self.frame(1, "a")
        response = self.world.on_http(HttpRequest("GET", "/", "", [], b""))
        self.assertEqual(response.status, 200)
        self.assertEqual(
            json.loads(response.body),
            {"plugin": "counter", "v": "py", "total": 1, "sessions": 1, "tenant": "acme"},
        )
        with self.assertRaises(Err) as caught:
            self.world.on_http(HttpRequest("GET", "/raise", "", [], b""))
        self.assertEqual(caught.exception.value, "counter-py: GET /raise")

    def test_state_is_counter_v2_layout_and_reads_v1(self):
        self.frame(5, "a")
        self.frame(5, "b")
        exported = json.loads(self.world.export_state())
        self.assertEqual(
            exported, {"layout": 2, "data": {"sessions": {"5": {"frames": 2, "first_seen_ms": 1000}}, "total": 2}}
        )
        # What counter-v2 (serde_json) writes, and what counter-v1 writes.
        fresh = type(self.world)()
        fresh.init("{}")
        fresh.import_state("v2", b'{"layout":2,"data":{"sessions":{"5":{"frames":9,"first_seen_ms":3}},"total":40}}')
        SENT.clear()
        fresh.on_frame(5, Frame_Text("x"))
        self.assertEqual(replies(), [{"v": "py", "n": 10, "total": 41, "echo": "x"}])
        fresh.import_state("v1", b'{"layout":1,"data":{"counts":{"6":4},"total":4}}')
        self.assertEqual(
            json.loads(fresh.export_state())["data"],
            {"sessions": {"6": {"frames": 4, "first_seen_ms": 1000}}, "total": 4},
        )
        with self.assertRaisesRegex(Err, "cannot read state layout 9"):
            fresh.import_state("v9", b'{"layout":9,"data":{}}')

    def test_config(self):
        with self.assertRaises(Err) as caught:
            WitWorld().init('{"fail_init": "no thanks"}')
        self.assertEqual(caught.exception.value, "no thanks")
        world = WitWorld()
        world.init('{"refuse_total_above": 3}')
        with self.assertRaisesRegex(Err, "above 3"):
            world.import_state("v", b'{"layout":2,"data":{"sessions":{},"total":4}}')


class Defaults(unittest.TestCase):
    def test_plugin_defaults(self):
        class Bare(baton_sdk.Plugin):
            pass

        world = baton_sdk.export(Bare)()
        world.init("")
        world.on_connect(1, ConnectRequest("acme", "/", "", [], False))
        world.on_frame(1, Frame_Text("x"))
        world.on_disconnect(1)
        world.on_timer(1, b"")
        response = world.on_http(HttpRequest("GET", "/", "", [], b""))
        self.assertEqual((response.status, json.loads(response.body)), (404, {"error": "not found"}))
        self.assertEqual(world.export_state(), b"")
        world.import_state("v", b"")
        with self.assertRaisesRegex(Err, "cannot read the state"):
            world.import_state("v", b"x")
        self.assertEqual(world.migrations(), [])

    def test_refuse_and_host_errors(self):
        class Picky(baton_sdk.Plugin):
            MIGRATIONS = [baton_sdk.sql.migration("1", "create table t (x int)")]

            def on_connect(self, session, request):
                raise baton_sdk.Refuse("full")

            def on_frame(self, session, frame):
                try:
                    baton_sdk.Session(404).send("x")
                except baton_sdk.SessionError as exc:
                    session.send_json({"kind": exc.kind})

        LOGS.clear()
        world = baton_sdk.export(Picky)()
        world.init("{}")
        self.assertEqual(world.migrations(), [Migration("1", "create table t (x int)")])
        with self.assertRaises(Err) as caught:
            world.on_connect(1, ConnectRequest("acme", "/", "", [], False))
        self.assertEqual(caught.exception.value, "full")
        self.assertEqual(LOGS, [])  # a Refuse is not logged
        SENT.clear()
        world.on_frame(1, Frame_Text("x"))
        self.assertEqual(replies(), [{"kind": "unknown-session"}])


if __name__ == "__main__":
    unittest.main()
