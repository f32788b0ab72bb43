"""A real redis-server (Debian's) on 127.0.0.1, no persistence.

    with redis_server() as url:      # "redis://127.0.0.1:PORT/0"
        ...
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile

from . import free_port, require, wait_for_port


@contextlib.contextmanager
def redis_server():
    binary = shutil.which("redis-server")
    require(binary is not None, "redis-server is not installed (Debian package redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gw-redis-") as tmp:
        proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--dir", tmp, "--protected-mode", "yes"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port("127.0.0.1", port, timeout=10, proc=proc)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
