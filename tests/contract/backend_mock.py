"""The mock backend for the behaviour suite: a real local executor, nothing to start."""
import contextlib


@contextlib.contextmanager
def mock_backend(env):
    yield {"backend": "mock", "options": {"state_dir": str(env.tmp / "mock"), "slots": 4}}


BACKENDS = {"mock": mock_backend}


@contextlib.contextmanager
def mock_sudo_backend(env):
    """Jobs run as the logged-in Unix user (needs root, like run_as: sudo on a real cluster)."""
    import os
    from tests.helpers import require
    require(os.geteuid() == 0, "mock with run_as: sudo needs root")
    yield {"backend": "mock", "options": {"state_dir": str(env.tmp / "mock"), "slots": 4, "run_as": "sudo"}}


BACKENDS["mock-sudo"] = mock_sudo_backend
