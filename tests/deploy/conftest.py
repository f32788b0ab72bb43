"""Fixtures of the deployment tests: real redis-server, gunicorn and NGINX, always cleaned up."""
from __future__ import annotations

import pytest

from tests.helpers import require

from .servers import Processes, RedisServer, gunicorn_available, nginx_available, redis_available


@pytest.fixture
def procs():
    owner = Processes()
    try:
        yield owner
    finally:
        owner.close()


@pytest.fixture(scope="module")
def module_procs():
    owner = Processes()
    try:
        yield owner
    finally:
        owner.close()


def _need_redis():
    require(redis_available(), "redis-server is not installed (Debian: apt-get install redis-server)")


@pytest.fixture(scope="module")
def redis_server(module_procs, tmp_path_factory):
    _need_redis()
    return RedisServer(module_procs, tmp_path_factory.mktemp("redis"))


@pytest.fixture
def need_redis():
    _need_redis()


@pytest.fixture
def need_gunicorn():
    require(gunicorn_available(), "gunicorn is not installed in this Python environment")


@pytest.fixture
def need_nginx():
    require(nginx_available(), "nginx is not installed (Debian: apt-get install nginx)")
