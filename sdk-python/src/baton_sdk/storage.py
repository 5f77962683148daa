"""Durable key-value storage of this tenant for this plugin."""

import json as _json

from . import _wit
from .errors import StorageError
from .frame import dumps


def get(key):
    """The value of `key` (bytes), or None."""
    return _wit.call(StorageError, _wit.imports("storage").get, key)


def set(key, value):
    """Sets `key` durably; a str value is stored as UTF-8."""
    if isinstance(value, str):
        value = value.encode()
    _wit.call(StorageError, _wit.imports("storage").set, key, bytes(value))


def delete(key):
    """`False` if it was not set."""
    return _wit.call(StorageError, _wit.imports("storage").delete, key)


def list(prefix="", limit=1000):
    """Keys starting with `prefix`, in order, at most `limit`."""
    return _wit.call(StorageError, _wit.imports("storage").list, prefix, int(limit))


def get_json(key, default=None):
    value = get(key)
    return default if value is None else _json.loads(value)


def set_json(key, value):
    set(key, dumps(value).encode())
