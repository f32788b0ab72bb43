"""The ``slurm_ssm`` scheduler plugin: Slurm through its command line.

Commands run through a transport (``local``, ``ssh`` or ``ssm``: gateway.transports) as the
authenticated Unix user (``run_as: sudo``) or as one service account (``run_as: service``);
listings and job details are served from one queue snapshot shared by every worker process
of the host, so polling clients never add load on slurmctld.
"""
from __future__ import annotations

__version__ = "0.1.0"


def make_scheduler(options: dict | None = None):
    """Entry point (``hpc_gateway.schedulers``): validate the options, return the plugin."""
    from .scheduler import SlurmScheduler
    return SlurmScheduler(options)
