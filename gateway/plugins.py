"""Scheduler plugin discovery and selection.

Plugins are pip distributions that register a factory in the entry-point group
``hpc_gateway.schedulers``; ``make_scheduler(options)`` returns an object whose methods carry
``@hookimpl``. Discovery happens inside create_app, never at import time.
"""
from __future__ import annotations

import logging
import time
from importlib.metadata import entry_points

import pluggy

from . import hookspecs, metrics
from .errors import ConfigError, GatewayError, NotImplementedByPlugin
from .turns import current_turns

ENTRY_POINT_GROUP = "hpc_gateway.schedulers"
log = logging.getLogger(__name__)


def installed_backends() -> dict:
    """Name -> entry point of every installed scheduler plugin."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


# A plugin lists, in its ``keeps_turn`` attribute, the hooks it answers from memory, a local
# database or a shared snapshot without waiting on the cluster: those keep the request's turn
# (gateway/turns.py). Every other hook gives the turn away while it runs.


class Scheduler:
    """The one registered scheduler plugin, called hook by hook with keyword arguments."""

    def __init__(self, name: str, impl: object):
        self.name = name
        self.impl = impl
        self.pm = pluggy.PluginManager("gateway")
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(impl, name=name)
        self.pm.check_pending()          # a misspelt hook name fails at start-up
        self.keeps_turn = frozenset(getattr(impl, "keeps_turn", ()) or ())

    def implements(self, hook: str) -> bool:
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    def call(self, hook: str, **kwargs):
        caller = getattr(self.pm.hook, hook)
        if not caller.get_hookimpls():
            metrics.record_hook(self.name, hook, 0.0, "not_implemented")
            raise NotImplementedByPlugin(
                f"the '{self.name}' scheduler backend does not support {hook.replace('_', ' ')}")
        start = time.perf_counter()
        outcome = "error"
        try:
            if hook in self.keeps_turn:
                result = caller(**kwargs)
            else:                          # a command on the cluster: let others run meanwhile
                with current_turns().waiting():
                    result = caller(**kwargs)
            outcome = "ok"
            return result
        except GatewayError as exc:
            outcome = metrics.outcome_for_status(exc.status)
            raise
        finally:
            metrics.record_hook(self.name, hook, time.perf_counter() - start, outcome)

    def close(self) -> None:
        close = getattr(self.impl, "close", None)
        if callable(close):
            close()


def load_scheduler(backend: str, options: dict | None, work_dir: str | None = None) -> Scheduler:
    """The backend's plugin, built with ``options``; with ``work_dir`` (the configuration's),
    ``gateway.config.default_work_dir()`` answers it while the plugin is built, so that
    a plugin's default directories follow the configuration."""
    backends = installed_backends()
    if backend not in backends:
        names = ", ".join(sorted(backends)) or "none"
        raise ConfigError(f"unknown scheduler backend {backend!r}; installed backends: {names}")
    try:
        factory = backends[backend].load()
    except Exception as exc:  # a broken plugin must say which one
        raise ConfigError(f"cannot load scheduler backend {backend!r}: {exc}") from exc
    from .config import _configured_work_dir
    token = _configured_work_dir.set(work_dir)
    try:
        impl = factory(dict(options or {}))
    except GatewayError:
        raise
    except Exception as exc:
        raise ConfigError(f"scheduler backend {backend!r} failed to start: {exc}") from exc
    finally:
        _configured_work_dir.reset(token)
    log.info("scheduler backend: %s", backend)
    return Scheduler(backend, impl)
