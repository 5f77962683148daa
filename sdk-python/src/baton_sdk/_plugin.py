"""The `Plugin` base class and `export`, which adapts it to the world-level
exports componentize-py expects: a class named `WitWorld` in the app module."""

import json as _json
import sys as _sys
import traceback as _traceback

from . import _wit
from . import log as _host_log
from .errors import Refuse, StateError
from .frame import Frame, dumps
from .http import ConnectRequest, HttpRequest, HttpResponse, to_wit_response
from .jobs import Info as _JobInfo
from .jobs import discard as _discard
from .jobs import failed as _failed
from .jobs import to_wit_outcome as _to_wit_outcome
from .presence import _entries
from .session import Session
from .state import VersionedState
from .webhooks import Delivery as _Delivery


class Plugin:
    """Subclass it, override what you need, and export it:

        class Counter(baton_sdk.Plugin):
            def init(self, config): ...
            def on_frame(self, session, frame): ...

        WitWorld = baton_sdk.export(Counter)

    The host runs one instance per tenant and calls its methods one at a
    time; the object lives as long as the instance. The class is created with
    no arguments, then `init(config)` is called (`self.config` holds the
    config too).

    Errors: in `init`, `on_connect`, `on_http`, `export_state` and
    `import_state` an exception becomes the call's error result (`str(exc)`):
    init fails the deploy, on_connect refuses the client (403), on_http
    answers 500, export/import_state refuse the swap. In `on_job` it is a
    failed attempt (`jobs.failed(<the traceback>)`), retried per the job's
    policy. In `on_frame`, `on_disconnect`, `on_timer`, `on_presence` and
    `on_webhook_result` it is logged (error, with the traceback) and
    swallowed: the instance and its state live on.

    State across hot swaps: set `self.state` to a `VersionedState`, and the
    default `export_state`/`import_state` save and restore it."""

    #: A `VersionedState` carried across swaps by the default export/import_state.
    state = None

    #: Schema migrations `[(id, sql), ...]`, oldest first (plugins with sql).
    MIGRATIONS = ()

    def init(self, config):
        """Starts the tenant's instance; `config` is `[config]` of
        `<name>.toml` as a dict. Raise to fail the deploy."""

    def on_connect(self, session, request):
        """A client opens `session` (`request`: a `ConnectRequest`). Raise
        (e.g. `Refuse("reason")`) to refuse it with HTTP 403."""

    def on_frame(self, session, frame):
        """A `Frame` from `session`, in the order the client sent it."""

    def on_disconnect(self, session):
        """`session` closed; nothing arrives for it afterwards."""

    def on_http(self, request):
        """An `HttpRequest`; return an `HttpResponse` (or a JSON value for a
        200). Raise for a 500."""
        return HttpResponse.json(404, {"error": "not found"})

    def on_timer(self, timer_id, payload):
        """A timer set with `timers.set` or `timers.set_named` fired
        (`payload`: bytes)."""

    def on_presence(self, topic, joins, leaves):
        """Presence changed in `topic`: lists of `presence.Entry`."""

    def on_job(self, job, payload):
        """Runs a job (see `jobs`): `job` is a `jobs.Info`, `payload` bytes.
        Return `jobs.done()` (or None), `jobs.failed(error)` to have it
        retried per its policy, `jobs.snooze(ms)` or `jobs.discard(reason)`;
        an exception is `failed(<the traceback>)`. The default discards the
        job: a plugin that enqueues jobs overrides this."""
        return _discard(f"this plugin has no on_job for jobs of kind {dumps(job.kind)}")

    def on_webhook_result(self, delivery):
        """A webhook queued with `webhooks.send` was delivered, or its
        attempts are used up (`delivery`: a `webhooks.Delivery`). Called at
        least once per message."""

    def export_state(self):
        """Bytes for the next version (hot swap). Default: `self.state.save()`
        when `state` is a `VersionedState`, else nothing."""
        if isinstance(self.state, VersionedState):
            return self.state.save()
        return b""

    def import_state(self, from_version, state):
        """Take over `state` (bytes) from version `from_version` (hex SHA-256
        of its file). Default: restore `self.state` (a `VersionedState`);
        without one, only an empty state is accepted, so that a stateful
        plugin that forgets this never silently drops its predecessor's state."""
        if isinstance(self.state, VersionedState):
            restored = type(self.state).restore(state)
            if restored is not None:
                self.state = restored
            return
        if state:
            raise StateError(
                f"this version cannot read the state of version {from_version} "
                "(it has no VersionedState `state` and does not override import_state)"
            )

    @classmethod
    def migrations(cls):
        """`MIGRATIONS` by default. Called before `init`: no configuration."""
        return list(cls.MIGRATIONS)


# The plugin object of this instance (one instance per tenant), and its class.
_plugin = None
_class = None


def _log(level, message):
    try:
        _host_log.log(level, message)
    except BaseException:
        try:
            print(message, file=_sys.stderr)
        except BaseException:
            pass


def _traceback_text():
    """The traceback being handled, on one line: the host's log replaces
    control characters (newlines too) in plugin messages."""
    try:
        lines = _traceback.format_exc().strip().splitlines()
    except BaseException:
        return "(no traceback)"
    return " | ".join(line.strip() for line in lines if line.strip())


def _describe(exc):
    return str(exc) or type(exc).__name__


def _failure_text(exc):
    """An exception in `on_job`, on one line, for the job's last error."""
    return f"{type(exc).__name__}: {_describe(exc)} [{_traceback_text()}]"


def _swallow(call):
    """Logs the exception being handled in a callback without an error result."""
    _log("error", f"{call} raised an exception (swallowed; the instance keeps its state): {_traceback_text()}")


def _to_err(call, exc):
    """The `Err` to raise for an exception in a callback with an error result."""
    err = _wit.err_class()
    if isinstance(exc, err):
        value = exc.value
        return err(value if isinstance(value, str) else str(value))
    if not isinstance(exc, Refuse):
        _log("warn", f"{call} failed: {_describe(exc)}: {_traceback_text()}")
    return err(_describe(exc))


def _current(call):
    if _plugin is None:
        raise RuntimeError(f"baton called {call} before init succeeded")
    return _plugin


class WitWorld:
    """What componentize-py calls (it may create this object for every call:
    it holds nothing; the plugin object lives in this module)."""

    def init(self, config):
        global _plugin
        try:
            settings = _json.loads(config) if config.strip() else {}
            if not isinstance(settings, dict):
                raise ValueError("the config is not a JSON object")
            plugin = _class()
            plugin.config = settings
            plugin.init(settings)
        except BaseException as exc:
            raise _to_err("init", exc) from None
        _plugin = plugin

    def on_connect(self, session, request):
        try:
            _current("on_connect").on_connect(Session(session), ConnectRequest.from_wit(request))
        except BaseException as exc:
            raise _to_err("on_connect", exc) from None

    def on_frame(self, session, frame):
        try:
            _current("on_frame").on_frame(Session(session), Frame.from_wit(frame))
        except BaseException:
            _swallow("on_frame")

    def on_disconnect(self, session):
        try:
            _current("on_disconnect").on_disconnect(Session(session))
        except BaseException:
            _swallow("on_disconnect")

    def on_http(self, request):
        try:
            return to_wit_response(_current("on_http").on_http(HttpRequest.from_wit(request)))
        except BaseException as exc:
            raise _to_err("on_http", exc) from None

    def on_timer(self, timer, payload):
        try:
            _current("on_timer").on_timer(timer, payload)
        except BaseException:
            _swallow("on_timer")

    def on_presence(self, topic, joins, leaves):
        try:
            _current("on_presence").on_presence(topic, _entries(joins), _entries(leaves))
        except BaseException:
            _swallow("on_presence")

    def on_job(self, job, payload):
        # No error result: an exception is a failed attempt, never a trap
        # (a trap would also cost the instance and its state).
        try:
            return _to_wit_outcome(_current("on_job").on_job(_JobInfo.from_wit(job), bytes(payload)))
        except BaseException as exc:
            text = _failure_text(exc)
            _log("warn", f"on_job failed (job {job.id}, kind {dumps(job.kind)}, attempt {job.attempt}): {text}")
            return _failed(text).to_wit()

    def on_webhook_result(self, delivery):
        try:
            _current("on_webhook_result").on_webhook_result(_Delivery.from_wit(delivery))
        except BaseException:
            _swallow("on_webhook_result")

    def export_state(self):
        try:
            data = _current("export_state").export_state()
            if isinstance(data, str):
                data = data.encode()
            return bytes(data or b"")
        except BaseException as exc:
            raise _to_err("export_state", exc) from None

    def import_state(self, from_version, state):
        try:
            _current("import_state").import_state(from_version, bytes(state))
        except BaseException as exc:
            raise _to_err("import_state", exc) from None

    def migrations(self):
        # No error result: a failure here traps, which fails the move (no
        # state exists yet: it is called before init).
        try:
            types = _wit.imports("types")
            return [
                m if isinstance(m, types.Migration) else types.Migration(m[0], m[1]) for m in _class.migrations()
            ]
        except BaseException:
            _swallow("migrations")
            raise


def export(plugin_class):
    """Makes `plugin_class` (a `Plugin` subclass) this component's plugin.
    Returns the class componentize-py looks for: bind it to the name
    `WitWorld` in the app module (`WitWorld = baton_sdk.export(MyPlugin)`)."""
    global _class
    if not (isinstance(plugin_class, type) and issubclass(plugin_class, Plugin)):
        raise TypeError("baton_sdk.export needs a subclass of baton_sdk.Plugin")
    _class = plugin_class
    return WitWorld
