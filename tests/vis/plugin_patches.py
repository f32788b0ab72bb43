"""``read_user_file`` for plugins whose owners have not added it yet (local verification only).

The vis tests need the scheduler plugin to implement the optional ``read_user_file`` hook
(gateway/hookspecs.py). The code below is, line for line, what docs/vis.md asks the
slurm_ssm plugin to add to its SlurmScheduler (and the aip plugin to its AipScheduler). With GATEWAY_VIS_TEST_SHIM=1 (never in CI),
a test registers it beside a plugin that lacks the hook, so the end-to-end test can be run
before the plugin carries it; in CI a plugin without the hook fails the test.
"""
from __future__ import annotations

import os

from gateway.errors import Forbidden
from gateway.hookspecs import hookimpl

SHIM_ENV = "GATEWAY_VIS_TEST_SHIM"


# ---- the patch: two methods of SlurmScheduler (self is the scheduler; add @hookimpl to the second)
def _user_home(self, account):
    from gateway_slurm_ssm import parse
    cache = self.__dict__.setdefault("_user_homes", {})
    if account not in cache:
        name = account
        if name is None:
            res = self._run(["id", "-un"])
            name = res.out.strip() if res.returncode == 0 else None
        res = self._run(["getent", "passwd", "--", name]) if name else None
        home = parse.parse_getent_home(res.out) if res is not None and res.returncode == 0 else None
        if home is None:
            raise Forbidden(f"user {name} has no home directory on the cluster")
        cache[account] = home
    return cache[account]


def read_user_file(self, user, path, limit):
    from gateway_slurm_ssm import commands, parse
    account = self._account_for(user.name)
    if path.startswith("~/"):
        path = _user_home(self, account) + path[1:]
    res = self._run(commands.read_bytes(path, 0, limit), as_user=account)
    if res.returncode != 0:
        if "No such file" in res.err:
            return None
        if "Permission denied" in res.err:
            raise Forbidden(parse.scheduler_words(res.out, res.err))
        raise parse.refusal(res.out, res.err)
    return res.stdout or None
# ---- end of the patch


# ---- the patch for plugins/aip/gateway_aip/scheduler.py: one method of the AIP scheduler
# (self is the scheduler; add @hookimpl, and Forbidden to the gateway.errors import)
def aip_read_user_file(self, user, path, limit):
    from gateway.errors import SchedulerRefused
    account = self._as(user)
    if path.startswith("~/"):
        name = account or self.account()
        home = self.home_of(name)
        if not home:
            raise Forbidden(f"user {name} has no home directory on the cluster")
        path = home + path[1:]
    res = self._run_plain(["head", "-c", str(int(limit)), "--", path], as_user=account)
    if res.returncode != 0:
        msg = res.err.strip()
        if "No such file" in msg:
            return None
        raise SchedulerRefused(f"cannot read {path}: {msg or res.returncode}")
    return res.stdout or None
# ---- end of the patch


class AipReadUserFile:
    def __init__(self, impl):
        self.impl = impl

    @hookimpl
    def read_user_file(self, user, path, limit):
        return aip_read_user_file(self.impl, user, path, limit)


class SlurmReadUserFile:
    """The patch as a separate pluggy plugin, delegating to the scheduler's own helpers."""

    def __init__(self, impl):
        self.impl = impl

    @hookimpl
    def read_user_file(self, user, path, limit):
        return read_user_file(self.impl, user, path, limit)


def shim_allowed() -> bool:
    return os.environ.get(SHIM_ENV, "") == "1"


def add_missing_read_user_file(scheduler) -> bool:
    """Register the shim beside a slurm_ssm or aip plugin that lacks the hook; True when added."""
    shims = {"slurm_ssm": SlurmReadUserFile, "aip": AipReadUserFile}
    if any(scheduler.implements(h) for h in ("vis_session", "read_user_file", "file_transport")) \
            or scheduler.name not in shims or not shim_allowed():
        return False
    scheduler.pm.register(shims[scheduler.name](scheduler.impl), name="vis-test-read-user-file")
    return True
