"""Structured logging into the host's log (tagged with tenant, plugin and
version). `print` also reaches the host log, untagged by level."""

import logging as _logging
import traceback as _traceback

from . import _wit

_LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")


def log(level, message):
    """`level`: "trace", "debug", "info", "warn" or "error"."""
    module = _wit.imports("log")
    module.log(getattr(module.Level, level.upper()), str(message))


def trace(message):
    log("trace", message)


def debug(message):
    log("debug", message)


def info(message):
    log("info", message)


def warn(message):
    log("warn", message)


warning = warn


def error(message):
    log("error", message)


def exception(message, level="error"):
    """Logs `message` with the traceback of the exception being handled."""
    lines = _traceback.format_exc().strip().splitlines()
    log(level, message + ": " + " | ".join(line.strip() for line in lines if line.strip()))


class Handler(_logging.Handler):
    """A `logging` handler writing to the host's log:
    `logging.getLogger().addHandler(baton_sdk.log.Handler())`."""

    def emit(self, record):
        try:
            no = record.levelno
            level = "error" if no >= 40 else "warn" if no >= 30 else "info" if no >= 20 else "debug"
            log(level, self.format(record))
        except Exception:
            self.handleError(record)
