"""HPC Gateway: a REST gateway in front of HPC batch schedulers.

gunicorn runs ``'gateway:create_app()'``; nothing happens at import time.
"""
from .app import create_app

__all__ = ["create_app"]
__version__ = "0.1.0"
