"""HPC Gateway: a REST gateway in front of HPC batch schedulers.

gunicorn runs ``'gateway:create_app()'``; nothing happens at import time. ``create_app`` is
imported on first use, not with the package: gunicorn's master imports a few modules of the
package (deploy/gunicorn.conf.py), and the workers it forks should find the rest of the core
unimported, read from disk as they start.
"""
__all__ = ["create_app"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
