"""Access to the bindings componentize-py generates (module `wit_world`).

The bindings exist only while componentize-py builds the component (and
inside it); on a normal CPython they are absent and only the pure-Python
parts of the SDK (the state helper, the HTTP helpers) work.

componentize-py imports the app at build time and snapshots the interpreter
(pre-initialization); at run time there is no file system to import from, so
a module first imported inside a callback fails with ImportError. Every
binding module is therefore imported here, when the SDK is imported.
"""

import importlib

INTERFACES = (
    "types",
    "session",
    "log",
    "clock",
    "tenant",
    "topics",
    "presence",
    "timers",
    "storage",
    "jobs",
    "webhooks",
    "sql",
)

_modules = {}
for _name in INTERFACES:
    try:
        _modules[_name] = importlib.import_module("wit_world.imports." + _name)
    except ImportError:
        pass

try:
    from componentize_py_types import Err as _err_class
except ImportError:
    _err_class = None


class BindingsMissing(RuntimeError):
    """A host interface is not in the world the plugin was built against."""


def imports(name):
    """The generated module of the imported interface `name` (e.g. "session")."""
    module = _modules.get(name)
    if module is None:
        try:
            module = importlib.import_module("wit_world.imports." + name)
        except ImportError as exc:
            if name == "sql":
                raise BindingsMissing(
                    "the sql interface is not in this plugin's world: build it against world "
                    "`plugin` (build-plugin SRC OUT plugin) and grant `[capabilities] sql = true`"
                ) from exc
            raise BindingsMissing(
                f"the host interface {name!r} is not available: baton_sdk works only inside a "
                "component built by componentize-py against baton's WIT (sdk-python/build-plugin)"
            ) from exc
        _modules[name] = module
    return module


def err_class():
    """`componentize_py_types.Err`: how the bindings raise and accept WIT errors."""
    global _err_class
    if _err_class is None:
        from componentize_py_types import Err

        _err_class = Err
    return _err_class


def kebab(name):
    """`Error_UnknownSession` -> `unknown-session`."""
    name = name.split("_", 1)[-1]
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("-")
        out.append(ch.lower())
    return "".join(out)


def call(error_class, function, *args):
    """Calls a host function, turning a WIT error into `error_class`."""
    try:
        return function(*args)
    except err_class() as exc:
        raise error_class.from_wit(exc.value) from None
