"""SQL in the tenant's own schema (PostgreSQL). Needs the plugin built against
world `plugin` (`build-plugin SRC OUT plugin`) and `[capabilities] sql = true`
in `<name>.toml`; in a plugin built against `plugin-no-sql` every call raises
`BindingsMissing`.

Parameters: None, bool, int, float, str, bytes, dict/list (json),
decimal.Decimal, uuid.UUID, or the wrappers `Json`, `Uuid`, `Decimal`,
`TimestampMs`. Columns come back as None, bool, int, float, str, bytes,
the parsed JSON value, str (uuid), decimal.Decimal, int (timestamp-ms)."""

import decimal as _decimal
import json as _json
import uuid as _uuid

from . import _wit
from .errors import SqlError
from .frame import dumps


class Json:
    def __init__(self, value):
        self.value = value


class Uuid:
    def __init__(self, value):
        self.value = str(value)


class Decimal:
    def __init__(self, value):
        self.value = str(value)


class TimestampMs:
    def __init__(self, value):
        self.value = int(value)


def _param(value):
    w = _wit.imports("sql")
    if value is None:
        return w.Value_Null()
    if isinstance(value, bool):
        return w.Value_Boolean(value)
    if isinstance(value, int):
        return w.Value_Int64(value)
    if isinstance(value, float):
        return w.Value_Float64(value)
    if isinstance(value, str):
        return w.Value_Text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return w.Value_Bytes(bytes(value))
    if isinstance(value, Json):
        return w.Value_Json(dumps(value.value))
    if isinstance(value, (dict, list)):
        return w.Value_Json(dumps(value))
    if isinstance(value, (Uuid, _uuid.UUID)):
        return w.Value_Uuid(str(getattr(value, "value", value)))
    if isinstance(value, (Decimal, _decimal.Decimal)):
        return w.Value_Decimal(str(getattr(value, "value", value)))
    if isinstance(value, TimestampMs):
        return w.Value_TimestampMs(value.value)
    raise TypeError(f"cannot pass a {type(value).__name__} as an SQL parameter")


def _column(value):
    name = type(value).__name__
    if name == "Value_Null":
        return None
    if name == "Value_Json":
        return _json.loads(value.value)
    if name == "Value_Decimal":
        return _decimal.Decimal(value.value)
    return value.value


class Rows:
    """`columns` (names), `types` (PostgreSQL type names), `rows` (tuples)."""

    def __init__(self, columns, types, rows):
        self.columns = columns
        self.types = types
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def dicts(self):
        return [dict(zip(self.columns, row)) for row in self.rows]


def query(sql, params=()):
    """Runs one statement and returns its `Rows`."""
    result = _wit.call(SqlError, _wit.imports("sql").query, sql, [_param(p) for p in params])
    return Rows(
        [c.name for c in result.columns],
        [c.type_name for c in result.columns],
        [tuple(_column(v) for v in row) for row in result.rows],
    )


def execute(sql, params=()):
    """Runs one statement and returns how many rows it changed."""
    return _wit.call(SqlError, _wit.imports("sql").execute, sql, [_param(p) for p in params])


def transaction(statements):
    """Runs `[(sql, params), ...]` in one transaction; each one's row count."""
    w = _wit.imports("sql")
    wit_statements = [w.Statement(s, [_param(p) for p in params]) for s, params in statements]
    return _wit.call(SqlError, w.transaction, wit_statements)


def migration(id, sql):
    """One schema migration for `Plugin.MIGRATIONS`: a stable unique id and its SQL."""
    return (id, sql)
