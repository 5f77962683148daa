"""`counter` in Python: counts the frames of each session, with the state
layout of counter-v2 (layout 2), so that a tenant moves between the Rust,
Python and JavaScript versions with its counts. Reads layout 1 (counter-v1).
See README.md."""

import baton_sdk
from baton_sdk import HttpResponse, Plugin, StateError, VersionedState


class State(VersionedState):
    """Layout 2: {"sessions": {"<id>": {"frames": n, "first_seen_ms": t}}, "total": t}."""

    LAYOUT = 2

    def __init__(self):
        self.sessions = {}  # session id (int) -> [frames, first_seen_ms]
        self.total = 0

    def to_data(self):
        return {
            # JSON object keys are strings, as serde writes BTreeMap<u64, _>.
            "sessions": {
                str(sid): {"frames": frames, "first_seen_ms": first}
                for sid, (frames, first) in sorted(self.sessions.items())
            },
            "total": self.total,
        }

    @classmethod
    def from_data(cls, data):
        state = cls()
        state.sessions = {
            int(sid): [int(s["frames"]), int(s["first_seen_ms"])] for sid, s in data["sessions"].items()
        }
        state.total = int(data["total"])
        return state

    @classmethod
    def from_layout(cls, saved):
        if saved.layout == 1:  # counter-v1: {"counts": {"<id>": n}, "total": t}
            now = baton_sdk.now_ms()
            state = cls()
            state.sessions = {int(sid): [int(n), now] for sid, n in saved.data["counts"].items()}
            state.total = int(saved.data["total"])
            return state
        raise StateError(f"counter py cannot read state layout {saved.layout}")


class Counter(Plugin):
    def init(self, config):
        if config.get("fail_init") is not None:
            raise RuntimeError(str(config["fail_init"]))
        self.refuse_import = bool(config.get("refuse_import", False))
        self.refuse_total_above = config.get("refuse_total_above")
        self.state = State()

    def on_frame(self, session, frame):
        if frame.text == "raise":
            # Test hook: the SDK logs this and swallows it; the state stays.
            raise RuntimeError("counter-py: a frame asked to raise")
        entry = self.state.sessions.get(session.id)
        if entry is None:
            entry = self.state.sessions[session.id] = [0, baton_sdk.now_ms()]
        entry[0] += 1
        self.state.total += 1
        echo = frame.text if frame.is_text else f"{len(frame.data)} bytes"
        session.send_json({"v": "py", "n": entry[0], "total": self.state.total, "echo": echo})

    def on_disconnect(self, session):
        self.state.sessions.pop(session.id, None)

    def on_http(self, request):
        if request.path == "/raise":
            raise RuntimeError("counter-py: GET /raise")  # test hook: HTTP 500
        return HttpResponse.json(
            200,
            {
                "plugin": "counter",
                "v": "py",
                "total": self.state.total,
                "sessions": len(self.state.sessions),
                "tenant": baton_sdk.tenant_name(),
            },
        )

    def import_state(self, from_version, state):
        if self.refuse_import:
            raise StateError(f"configured to refuse the state of {from_version}")
        super().import_state(from_version, state)
        limit = self.refuse_total_above
        if limit is not None and self.state.total > limit:
            raise StateError(f"a total of {self.state.total} frames is above {limit}")


WitWorld = baton_sdk.export(Counter)
