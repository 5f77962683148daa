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


# wit_world.imports.jobs, as componentize-py 0.25 generates it.
@dataclass
class RetryPolicy:
    max_attempts: int
    base_delay_ms: int
    max_delay_ms: int


@dataclass
class Options:
    delay_ms: int
    retry: object
    unique_key: object
    unique_for_ms: int
    timeout_ms: object


@dataclass
class JobInfo:
    id: int
    kind: str
    attempt: int
    max_attempts: int
    enqueued_ms: int
    scheduled_ms: int
    schedule: object


@dataclass
class JobOutcome_Done:
    pass


@dataclass
class JobOutcome_Failed:
    value: str


@dataclass
class JobOutcome_Snooze:
    value: int


@dataclass
class JobOutcome_Discard:
    value: str


@dataclass
class Error_Duplicate:
    value: int


@dataclass
class Error_Invalid:
    value: str


# wit_world.imports.webhooks
@dataclass
class WebhookResult:
    id: str
    endpoint: str
    event_type: str
    delivered: bool
    attempts: int
    last_status: object
    last_error: object


@dataclass
class Error_UnknownEndpoint:
    pass


SENT = []
LOGS = []
NOW = [1000]
CALLS = []  # (interface, function, args) of the jobs and webhooks stand-ins


def _enqueue(kind, payload, options):
    CALLS.append(("jobs", "enqueue", (kind, payload, options)))
    if options.unique_key == "taken":
        raise Err(Error_Duplicate(41))
    return 42


def _schedule(name, cron, kind, payload):
    CALLS.append(("jobs", "schedule", (name, cron, kind, payload)))
    if cron == "bad":
        raise Err(Error_Invalid("bad cron expression"))


def _webhook_send(endpoint, event_type, payload, idempotency_key):
    CALLS.append(("webhooks", "send", (endpoint, event_type, payload, idempotency_key)))
    if endpoint == "nowhere":
        raise Err(Error_UnknownEndpoint())
    return "msg_1"


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
_module(
    "wit_world.imports.jobs",
    RetryPolicy=RetryPolicy,
    Options=Options,
    JobInfo=JobInfo,
    JobOutcome_Done=JobOutcome_Done,
    JobOutcome_Failed=JobOutcome_Failed,
    JobOutcome_Snooze=JobOutcome_Snooze,
    JobOutcome_Discard=JobOutcome_Discard,
    enqueue=_enqueue,
    cancel=lambda job: (CALLS.append(("jobs", "cancel", (job,))), job == 42)[1],
    schedule=_schedule,
    unschedule=lambda name: (CALLS.append(("jobs", "unschedule", (name,))), name == "daily")[1],
)
_module("wit_world.imports.webhooks", WebhookResult=WebhookResult, send=_webhook_send)

import baton_sdk  # noqa: E402  (after the stand-ins)
from baton_sdk import state as state_mod  # noqa: E402
from baton_sdk._plugin import WitWorld  # noqa: E402

from baton_sdk import jobs, webhooks  # noqa: E402

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
        # No on_job: the job is discarded (kept as dead, with why), not retried.
        self.assertEqual(
            world.on_job(JobInfo(9, "bill", 1, 20, 5, 6, None), b"{}"),
            JobOutcome_Discard('this plugin has no on_job for jobs of kind "bill"'),
        )
        world.on_webhook_result(WebhookResult("msg_1", "billing", "invoice.paid", True, 1, 200, None))
        self.assertEqual(LOGS, [])

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


def job_info(kind="bill", attempt=1, schedule=None):
    return JobInfo(7, kind, attempt, 3, 1000, 2000, schedule)


class Jobs(unittest.TestCase):
    def setUp(self):
        LOGS.clear()
        CALLS.clear()

    def test_on_job_outcomes(self):
        seen = []

        class Worker(baton_sdk.Plugin):
            def on_job(self, job, payload):
                seen.append((job.id, job.kind, job.attempt, job.max_attempts, job.enqueued_ms, job.scheduled_ms,
                             job.schedule, job.is_last_attempt, payload))
                return {
                    "done": jobs.done(),
                    "none": None,
                    "failed": jobs.failed("the API said 503"),
                    "snooze": jobs.snooze(30_000),
                    "discard": jobs.discard("no such invoice"),
                    "raw": JobOutcome_Snooze(5),
                }[job.kind]

        world = baton_sdk.export(Worker)()
        world.init("{}")
        self.assertEqual(world.on_job(job_info("done", 3, "daily"), b"p"), JobOutcome_Done())
        self.assertEqual(seen, [(7, "done", 3, 3, 1000, 2000, "daily", True, b"p")])
        self.assertEqual(world.on_job(job_info("none"), b""), JobOutcome_Done())
        self.assertEqual(world.on_job(job_info("failed"), b""), JobOutcome_Failed("the API said 503"))
        self.assertEqual(world.on_job(job_info("snooze"), b""), JobOutcome_Snooze(30_000))
        self.assertEqual(world.on_job(job_info("discard"), b""), JobOutcome_Discard("no such invoice"))
        self.assertEqual(world.on_job(job_info("raw"), b""), JobOutcome_Snooze(5))
        self.assertEqual(LOGS, [])
        self.assertEqual(jobs.failed(ValueError("bad")), jobs.Outcome("failed", "bad"))
        with self.assertRaises(ValueError):
            jobs.snooze(-1)

    def test_an_exception_in_on_job_is_a_failed_attempt_not_a_trap(self):
        class Broken(baton_sdk.Plugin):
            def on_job(self, job, payload):
                if job.kind == "wrong":
                    return "done"
                raise ValueError("the API said no")

        world = baton_sdk.export(Broken)()
        world.init("{}")
        outcome = world.on_job(job_info("bill", attempt=2), b"")
        self.assertIsInstance(outcome, JobOutcome_Failed)
        self.assertTrue(outcome.value.startswith("ValueError: the API said no [Traceback (most recent call last):"))
        self.assertIn("in on_job", outcome.value)
        self.assertNotIn("\n", outcome.value)
        self.assertEqual(len(LOGS), 1)
        self.assertEqual(LOGS[0][0], Level.WARN)
        self.assertIn('on_job failed (job 7, kind "bill", attempt 2): ValueError: the API said no', LOGS[0][1])
        # What on_job returns is checked too: a wrong value is a failed attempt.
        outcome = world.on_job(job_info("wrong"), b"")
        self.assertIsInstance(outcome, JobOutcome_Failed)
        self.assertIn("on_job must return jobs.done()", outcome.value)

    def test_enqueue_cancel_schedule_unschedule(self):
        self.assertEqual(jobs.enqueue("send-invoice", '{"invoice":42}'), 42)
        self.assertEqual(
            CALLS[-1], ("jobs", "enqueue", ("send-invoice", b'{"invoice":42}', Options(0, None, None, 0, None)))
        )
        jobs.enqueue(
            "sync",
            b"x",
            delay_ms=60_000,
            retry=jobs.RetryPolicy(max_attempts=5, base_delay_ms=1000),
            unique_key="invoice-42",
            unique_for_ms=3_600_000,
            timeout_ms=2000,
        )
        self.assertEqual(
            CALLS[-1][2],
            ("sync", b"x", Options(60_000, RetryPolicy(5, 1000, 86_400_000), "invoice-42", 3_600_000, 2000)),
        )
        jobs.enqueue("sync", retry=(1, 0, 0))
        self.assertEqual(CALLS[-1][2][2].retry, RetryPolicy(1, 0, 0))
        with self.assertRaises(baton_sdk.JobError) as caught:
            jobs.enqueue("sync", b"", unique_key="taken")
        self.assertEqual((caught.exception.kind, caught.exception.job_id), ("duplicate", 41))
        self.assertTrue(jobs.cancel(42))
        self.assertFalse(jobs.cancel(43))
        jobs.schedule("daily", "5 0 * * *", "bill", b"{}")
        self.assertEqual(CALLS[-1], ("jobs", "schedule", ("daily", "5 0 * * *", "bill", b"{}")))
        with self.assertRaises(baton_sdk.JobError) as caught:
            jobs.schedule("daily", "bad", "bill")
        self.assertEqual((caught.exception.kind, caught.exception.detail), ("invalid", "bad cron expression"))
        self.assertIsNone(caught.exception.job_id)
        self.assertTrue(jobs.unschedule("daily"))
        self.assertFalse(jobs.unschedule("weekly"))


class Webhooks(unittest.TestCase):
    def setUp(self):
        LOGS.clear()
        CALLS.clear()

    def test_send_and_send_json(self):
        self.assertEqual(webhooks.send("billing", "invoice.paid", b'{"invoice":42}'), "msg_1")
        self.assertEqual(CALLS[-1], ("webhooks", "send", ("billing", "invoice.paid", b'{"invoice":42}', None)))
        webhooks.send_json("billing", "invoice.paid", {"invoice": 42, "note": "é"}, idempotency_key="inv-42")
        self.assertEqual(
            CALLS[-1][2], ("billing", "invoice.paid", '{"invoice":42,"note":"é"}'.encode(), "inv-42")
        )
        with self.assertRaises(baton_sdk.WebhookError) as caught:
            webhooks.send("nowhere", "x", "{}")
        self.assertEqual(caught.exception.kind, "unknown-endpoint")

    def test_on_webhook_result_gets_a_delivery_and_exceptions_are_logged(self):
        got = []

        class Notified(baton_sdk.Plugin):
            def on_webhook_result(self, delivery):
                got.append(delivery)
                if not delivery.delivered:
                    raise RuntimeError("cannot record the failure")

        world = baton_sdk.export(Notified)()
        world.init("{}")
        delivered = WebhookResult("msg_1", "billing", "invoice.paid", True, 1, 200, None)
        self.assertIsNone(world.on_webhook_result(delivered))
        world.on_webhook_result(WebhookResult("msg_2", "billing", "invoice.paid", False, 8, 503, "HTTP 503"))
        self.assertEqual(
            [(d.id, d.endpoint, d.event_type, d.delivered, d.attempts, d.last_status, d.last_error) for d in got],
            [
                ("msg_1", "billing", "invoice.paid", True, 1, 200, None),
                ("msg_2", "billing", "invoice.paid", False, 8, 503, "HTTP 503"),
            ],
        )
        self.assertEqual(len(LOGS), 1)
        self.assertEqual(LOGS[0][0], Level.ERROR)
        self.assertIn("on_webhook_result raised an exception (swallowed", LOGS[0][1])
        self.assertIn("cannot record the failure", LOGS[0][1])


if __name__ == "__main__":
    unittest.main()
