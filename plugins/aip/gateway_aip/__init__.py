"""The ``aip`` scheduler plugin: SkyForm AIP and LSF-style schedulers through their command line."""
from __future__ import annotations

__version__ = "0.1.0"


def make_scheduler(options: dict):
    """Entry point (``hpc_gateway.schedulers``): validate ``options``, return the plugin."""
    from .scheduler import AipScheduler
    return AipScheduler(options)
