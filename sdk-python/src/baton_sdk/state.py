"""Versioned state for hot swaps, the same encoding as the Rust SDK's
`baton_sdk::state`: JSON `{"layout": N, "data": ...}`.

During a hot swap the old version's `export_state` hands bytes to the new
version's `import_state`, in either direction (a rollback hands a newer layout
to an older version), so the bytes carry the layout they were written with.

    class State(VersionedState):
        LAYOUT = 2

        def __init__(self):
            self.total = 0

        @classmethod
        def from_layout(cls, saved):          # any layout but LAYOUT
            if saved.layout == 1:
                state = cls()
                state.total = saved.data["count"]
                return state
            return super().from_layout(saved) # refuses

JSON object keys are strings: a Rust `BTreeMap<u64, _>` is written as
`{"7": ...}`; convert such keys in `to_data`/`from_data`.
"""

import json as _json

from .errors import StateError
from .frame import dumps


class Saved:
    """State saved by some version of the plugin: its `layout` and its
    `data` (the decoded JSON value)."""

    __slots__ = ("layout", "data")

    def __init__(self, layout, data):
        self.layout = layout
        self.data = data

    def __repr__(self):
        return f"Saved(layout={self.layout})"


def encode(layout, data):
    """`{"layout": layout, "data": data}` as compact JSON bytes."""
    return dumps({"layout": int(layout), "data": data}).encode()


def decode(raw):
    """The `Saved` in `raw`, or None for empty bytes (no state). Raises
    `StateError` if it is not a baton state."""
    if not raw:
        return None
    try:
        value = _json.loads(bytes(raw))
        layout = value["layout"]
        data = value["data"]
    except (ValueError, TypeError, KeyError) as exc:
        raise StateError(f"not a baton state: {exc}") from None
    if not isinstance(layout, int) or isinstance(layout, bool) or layout < 0:
        raise StateError(f"not a baton state: layout {layout!r}")
    return Saved(layout, data)


class VersionedState:
    """Base class of a plugin's state. Set `LAYOUT`; change it whenever the
    shape changes, and read the other layouts in `from_layout`.

    By default the data is the instance's attributes (`vars(self)`) and
    `from_data` sets them on `cls()`: the constructor must take no arguments.
    Override `to_data`/`from_data` for anything else (e.g. int dict keys)."""

    LAYOUT = 1

    def to_data(self):
        """The JSON value saved for this state."""
        return dict(vars(self))

    @classmethod
    def from_data(cls, data):
        """Builds the state from data written with `LAYOUT`."""
        state = cls()
        if not isinstance(data, dict):
            raise StateError(f"state layout {cls.LAYOUT}: expected an object")
        vars(state).update(data)
        return state

    @classmethod
    def from_layout(cls, saved):
        """Reads state written with another layout (older on an upgrade, newer
        on a rollback). The default refuses, which keeps the tenant on its old
        version rather than losing its state."""
        raise StateError(f"this version reads state layout {cls.LAYOUT}, not {saved.layout}")

    def save(self):
        """The bytes for `export_state`."""
        return encode(self.LAYOUT, self.to_data())

    @classmethod
    def restore(cls, raw):
        """The state in `raw` (from `import_state`), or None for empty bytes."""
        saved = decode(raw)
        if saved is None:
            return None
        try:
            if saved.layout == cls.LAYOUT:
                return cls.from_data(saved.data)
            return cls.from_layout(saved)
        except StateError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateError(f"cannot read state layout {saved.layout}: {type(exc).__name__}: {exc}") from None
