"""A stand-in LSF/AIP cluster for the tests (a TEST DOUBLE, see lsf_standin.py).

API::

    from tests.standins.lsf import lsf_standin

    # clean_period=SECONDS (optional): finished jobs leave bjobs/brequeue after it (CLEAN_PERIOD)
    with lsf_standin(admins=("gwadmin",), slots=4) as cluster:   # -> LsfStandin
        cluster.root        # the cluster directory (under /tmp, readable by everyone)
        cluster.bindir      # bin/: bsub bjobs ... bmod bswitch, csub cjobs ... (symlinks to the double)
        cluster.env_file    # etc/profile.lsf: sets LSF_ENVDIR, LSF_BINDIR, PATH (like aip.sh)
        cluster.envdir      # etc/ (LSF_ENVDIR)
        cluster.run(["bjobs", "-u", "all"], user="gwalice")   # -> CompletedProcess
        cluster.stop_daemon(); cluster.start_daemon()          # "daemons down" and back
        cluster.fail_auth(True)   # csub prints AIP's authentication failure (and exits 0)

On enter: writes the cluster (config, profile, bin/ with the program and its command
symlinks, a world-writable state/ directory) and starts the daemon (as root when the tests
run as root, so jobs run as their owners). On exit: stops the daemon, kills the process
groups of jobs still running and removes the directory.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "lsf_standin.py"
B_COMMANDS = ("bsub", "bjobs", "bkill", "bstop", "bresume", "brequeue", "bhosts", "bqueues",
              "busers", "bhist", "bpeek", "badmin", "bparams", "lsid", "bmod", "bswitch")
C_COMMANDS = ("csub", "cjobs", "ckill", "cstop", "cresume", "chosts", "cqueues", "chist", "cread")
# short has a hard run limit (lsb.queues RUNLIMIT, minutes): what a queue allows binds its
# users (bsub -W, bmod -W); vnc's description is the sampled cluster's (bqueues -l vnc).
DEFAULT_QUEUES = ({"name": "short", "priority": 50, "run_limit": 60},
                  {"name": "vnc", "priority": 40, "description": "Queue for interactive VNC desktop sessions"},
                  {"name": "normal", "priority": 30, "default": True})


def _python() -> str:
    # An interpreter every test user can run (the venv under /work may not be).
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


@dataclass
class LsfStandin:
    root: Path
    slots: int
    admins: tuple
    daemon_pid: int | None = None
    _log: object = field(default=None, repr=False)

    @property
    def bindir(self) -> Path:
        return self.root / "bin"

    @property
    def envdir(self) -> Path:
        return self.root / "etc"

    @property
    def env_file(self) -> Path:
        return self.root / "etc" / "profile.lsf"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log_file(self) -> Path:
        return self.root / "daemon.log"

    def env(self) -> dict:
        return {"LSF_ENVDIR": str(self.envdir), "LSB_NTRIES": "1",
                "PATH": f"{self.bindir}:/usr/local/bin:/usr/bin:/bin"}

    def run(self, argv: Sequence[str], user: str | None = None, stdin: bytes | None = None,
            timeout: float = 30, cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run a command of the double (as ``user`` through runuser when root)."""
        argv = [str(self.bindir / argv[0]) if "/" not in argv[0] else argv[0], *map(str, argv[1:])]
        env = {**self.env(), "HOME": "/", "LANG": "C.UTF-8"}
        if user and os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam(user)
            env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
            cwd = cwd or pw.pw_dir
            kwargs = {"user": pw.pw_uid, "group": pw.pw_gid,
                      "extra_groups": os.getgrouplist(user, pw.pw_gid)}
        else:
            kwargs = {}
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=env,
                              cwd=cwd or "/", **kwargs)

    def start_daemon(self, timeout: float = 10.0) -> None:
        if self.daemon_pid and _alive(self.daemon_pid):
            return
        self._log = open(self.log_file, "ab")
        proc = subprocess.Popen([_python(), str(self.bindir / "lsf_standin.py"), "_daemon"],
                                env={"LSF_ENVDIR": str(self.envdir), "PATH": "/usr/bin:/bin",
                                     "LANG": "C.UTF-8"},
                                stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                start_new_session=True, close_fds=True, cwd="/")
        self.daemon_pid = proc.pid
        deadline = time.monotonic() + timeout
        pidfile = self.state_dir / "daemon.pid"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"LSF stand-in daemon exited ({proc.returncode}): "
                                   f"{self.log_file.read_text(errors='replace')[-2000:]}")
            if pidfile.exists() and pidfile.read_text().strip() == str(proc.pid):
                self._proc = proc
                return
            time.sleep(0.02)
        raise RuntimeError("LSF stand-in daemon did not start")

    def stop_daemon(self, timeout: float = 10.0) -> None:
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        self.daemon_pid = None

    def fail_auth(self, on: bool = True) -> None:
        marker = self.state_dir / "fail-auth"
        if on:
            marker.write_text("csub answers with AIP's authentication failure\n")
            marker.chmod(0o644)
        elif marker.exists():
            marker.unlink()

    def state(self) -> dict:
        try:
            return json.loads((self.state_dir / "state.json").read_text())
        except FileNotFoundError:
            return {"jobs": {}}

    def kill_jobs(self) -> None:
        for job in self.state().get("jobs", {}).values():
            pid = job.get("pid")
            if pid and job.get("status") in ("RUN", "USUSP", "SSUSP"):
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.killpg(pid, sig)
                    except OSError:
                        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def install(root: Path, *, admins: Sequence[str], slots: int, queues=DEFAULT_QUEUES,
            cluster_name: str = "lava", host: str | None = None,
            first_job_id: int | None = None, clean_period: float | None = None) -> None:
    """Write a stand-in cluster into ``root`` (which must exist)."""
    root = Path(root)
    for sub in ("bin", "etc", "state"):
        (root / sub).mkdir(exist_ok=True)
    os.chmod(root, 0o755)
    os.chmod(root / "bin", 0o755)
    os.chmod(root / "etc", 0o755)
    os.chmod(root / "state", 0o777)       # every user's commands write the state (test double)
    program = root / "bin" / "lsf_standin.py"
    text = PROGRAM.read_text()
    lines = text.splitlines(keepends=True)
    lines[0] = f"#!{_python()}\n"
    program.write_text("".join(lines))
    program.chmod(0o755)
    for name in B_COMMANDS + C_COMMANDS:
        link = root / "bin" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("lsf_standin.py")
    conf = {
        "cluster_name": cluster_name,
        "version": "LSF stand-in 2.2 (test double, tests/standins/lsf), an OpenLava-lineage look-alike",
        "hosts": [{"name": host or socket.gethostname().split(".")[0], "max": int(slots)}],
        "queues": [dict(q) for q in queues],
        "admins": list(admins),
        "state_dir": str(root / "state"),
        "user_max": 20,
        # Job ids differ between clusters so that the -o files several test clusters write
        # into the same home directories do not collide.
        "first_job_id": first_job_id or random.randint(1000, 9_000_000),
    }
    if clean_period is not None:
        # lsb.params CLEAN_PERIOD (seconds): finished jobs leave bjobs after it (unset: never)
        conf["clean_period"] = clean_period
    (root / "etc" / "lsf.standin.json").write_text(json.dumps(conf, indent=2) + "\n")
    (root / "etc" / "profile.lsf").write_text(
        "# Environment of the LSF stand-in (like SkyForm AIP's /opt/skyformai/etc/aip.sh)\n"
        f"LSF_ENVDIR={root / 'etc'}\nexport LSF_ENVDIR\n"
        f"LSF_BINDIR={root / 'bin'}\nexport LSF_BINDIR\n"
        f"LSF_SERVERDIR={root / 'bin'}\nexport LSF_SERVERDIR\n"
        f'PATH={root / "bin"}:$PATH\nexport PATH\n')
    for f in ("lsf.standin.json", "profile.lsf"):
        os.chmod(root / "etc" / f, 0o644)


@contextmanager
def lsf_standin(*, admins: Sequence[str] = ("gwadmin",), slots: int = 4, queues=DEFAULT_QUEUES,
                cluster_name: str = "lava", base: str = "/tmp",
                clean_period: float | None = None) -> Iterator[LsfStandin]:
    root = Path(tempfile.mkdtemp(prefix="lsf-standin-", dir=base))
    admins = tuple(dict.fromkeys([*admins, "root"]))
    cluster = LsfStandin(root=root, slots=slots, admins=admins)
    try:
        install(root, admins=admins, slots=slots, queues=queues, cluster_name=cluster_name,
                clean_period=clean_period)
        cluster.start_daemon()
        yield cluster
    finally:
        cluster.stop_daemon()
        cluster.kill_jobs()
        if cluster._log:
            cluster._log.close()
        shutil.rmtree(root, ignore_errors=True)
