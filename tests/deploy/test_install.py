"""deploy/install.sh into a temporary prefix, started with the command it prints, then removed.

Needs PyPI (or a configured index/wheelhouse) for the gateway's dependencies. As root the
service runs as a throw-away system account the installer creates (and --purge removes);
otherwise as the invoking user.
"""
from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import ApiClient, require

from .servers import ROOT, Proc, Processes, free_port, wait_until

INSTALL = ROOT / "deploy" / "install.sh"
pytestmark = pytest.mark.timeout(900)


def _python_for(user_is_other: bool) -> str:
    """An interpreter the service account may run (root's pyenv or a venv under /root is not)."""
    candidates = ["/usr/bin/python3"] if user_is_other else [sys.executable, "/usr/bin/python3"]
    for py in candidates:
        if os.path.exists(py) and subprocess.run([py, "-c", "import venv, ensurepip"],
                                                 capture_output=True).returncode == 0:
            return py
    require(False, "no Python with the venv module for the installer (Debian: apt-get install python3-venv)")


def _run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


def _installer(prefix_dir, prefix, user, python, *extra):
    return [str(INSTALL), "--prefix", str(prefix), "--plugins", "mock", "--user", user, "--no-start",
            "--unit-dir", str(prefix_dir / "units"), "--python", str(python), *extra]


def _service_account(as_root: bool) -> str:
    """A fresh account the installer creates (as root), else the caller's own."""
    return f"hpcgw-t{secrets.token_hex(3)}" if as_root else pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def prefix_dir():
    # Under /var/tmp, world-traversable: pytest's tmp dirs are private to root, and the
    # service account must reach its prefix.
    base = Path(tempfile.mkdtemp(prefix="hpcgw-install-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_install_start_use_uninstall(prefix_dir):
    require(shutil.which("bash") is not None, "bash is needed by deploy/install.sh")
    as_root = os.geteuid() == 0
    user = _service_account(as_root)
    python = _python_for(as_root)
    prefix, units = prefix_dir / "opt", prefix_dir / "units"
    port = free_port()
    given = prefix_dir / "given.yaml"
    given.write_text(yaml.safe_dump({"bind": "127.0.0.1", "http_port": port, "log_level": "info",
                                     "scheduler": {"backend": "mock", "options": {"slots": 2}}}))
    argv = _installer(prefix_dir, prefix, user, python, "--config", str(given))
    procs = Processes()
    try:
        out = _run(argv)
        assert out.returncode == 0, f"install.sh failed:\n{out.stdout}\n{out.stderr}"
        lines = out.stdout.splitlines()

        # What it wrote.
        cfg = yaml.safe_load((prefix / "etc" / "gateway.yaml").read_text())
        assert cfg["work_dir"] == str(prefix / "var")
        assert cfg["secret_file"] == str(prefix / "etc" / "secret.key")
        assert cfg["http_port"] == port                       # the given file's own keys are kept
        secret = prefix / "etc" / "secret.key"
        st = secret.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert pwd.getpwuid(st.st_uid).pw_name == user
        assert len(secret.read_text().strip()) >= 32
        unit = (units / "hpc-gateway.service").read_text()
        assert "@" not in unit.replace("$MAINPID", "")
        assert f"User={user}" in unit
        exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart=")).split("=", 1)[1]
        assert os.access(shlex.split(exec_start)[0], os.X_OK)
        if shutil.which("systemd-analyze"):
            verify = _run(["systemd-analyze", "verify", str(units / "hpc-gateway.service")])
            assert verify.returncode == 0, verify.stderr

        # Start it exactly as it says.
        start_at = next(i for i, line in enumerate(lines) if line.rstrip().endswith("Start it with:"))
        command = lines[start_at + 1].strip()
        assert str(prefix / "bin" / "hpc-gateway-server") in command
        server = procs.add(Proc("installed gateway", shlex.split(command), prefix_dir / "server.log")).start()
        base = f"http://127.0.0.1:{port}"
        import requests
        wait_until(lambda: requests.get(base + "/aip/v9.2/health", timeout=5).status_code == 200, 90,
                   "the installed gateway to answer /health", proc=server)

        # The first start made the administrator; log in with its password and run a job.
        password = (prefix / "var" / "initial-admin-password").read_text().strip()
        admin = ApiClient(base).login("admin", password)
        job_id = admin.submit(command="echo installed-and-running", name="install-check")
        job = admin.wait_for(job_id, {"COMPLETED", "FAILED"}, timeout=60)
        assert job["state"] == "COMPLETED", job
        assert "installed-and-running" in admin.output(job_id)["data"]

        # The CLI wrapper works on this installation's users file; the server sees the new user.
        # Run by root as the docs show it, it acts as the service account: the users file it
        # rewrites stays readable by the service (before, root's rewrite locked everyone out).
        users_file = prefix / "var" / "users.yaml"
        owner = users_file.stat().st_uid
        add = _run([str(prefix / "bin" / "hpc-gateway"), "users", "add", "carol", "--password-stdin"],
                   input="carol-password-9\n")
        assert add.returncode == 0, add.stderr
        assert users_file.stat().st_uid == owner
        carol = ApiClient(base).login("carol", "carol-password-9")
        assert ApiClient(base).login("admin", password)
        # A new password ends carol's sessions (the store is the installation's).
        changed = _run([str(prefix / "bin" / "hpc-gateway"), "users", "passwd", "carol", "--password-stdin"],
                       input="carol-password-10\n")
        assert changed.returncode == 0 and "ended 1 session" in changed.stdout, (changed.stdout, changed.stderr)
        assert carol.get("/jobs").status == 401

        # Logs: the per-host file (journald takes stderr under systemd).
        log = prefix / "log" / f"hpc-gateway.log.{socket.gethostname().split('.')[0]}"
        assert "POST /aip/v9.2/jobs" in log.read_text()

        server.stop()

        # Uninstall keeps configuration, secret, state and logs, and what it did not write ...
        (prefix / "bin" / "operator-tool").write_text("#!/bin/sh\n")
        out = _run([str(INSTALL), "--uninstall", "--prefix", str(prefix)])
        assert out.returncode == 0, out.stderr
        for gone in ("venv", "bin/hpc-gateway", "bin/hpc-gateway-server", "etc/gunicorn.conf.py", "share"):
            assert not (prefix / gone).exists(), gone
        assert not (units / "hpc-gateway.service").exists()
        for kept in ("etc/gateway.yaml", "etc/hpc-gateway.env", "etc/secret.key", "var/users.yaml", "log",
                     "bin/operator-tool"):
            assert (prefix / kept).exists(), kept
        # ... and --purge removes the rest, and the account it created.
        out = _run([str(INSTALL), "--uninstall", "--purge", "--prefix", str(prefix)])
        assert out.returncode == 0, out.stderr
        assert not prefix.exists()
        if as_root:
            with pytest.raises(KeyError):
                pwd.getpwnam(user)
    finally:
        procs.close()
        if prefix.exists():
            _run([str(INSTALL), "--uninstall", "--purge", "--prefix", str(prefix)])
        if as_root:
            subprocess.run(["userdel", user], capture_output=True)


def test_the_installer_refuses_what_it_cannot_do(prefix_dir):
    # A directory holding something else (--prefix /usr/local): --purge would remove it all.
    full = prefix_dir / "full"
    (full / "bin").mkdir(parents=True)
    (full / "bin" / "someone-elses").write_text("x")
    out = _run([str(INSTALL), "--prefix", str(full), "--plugins", "mock", "--no-start"])
    assert out.returncode != 0 and "not empty" in out.stderr, out.stderr
    assert sorted(p.name for p in full.rglob("*")) == ["bin", "someone-elses"]
    out = _run([str(INSTALL), "--prefix", str(prefix_dir / "x"), "--plugins", "no_such_plugin"])
    assert out.returncode != 0 and "no plugin 'no_such_plugin'" in out.stderr and "mock" in out.stderr
    out = _run([str(INSTALL), "--uninstall", "--prefix", str(prefix_dir / "nothing-here")])
    assert out.returncode != 0 and "no HPC Gateway installation" in out.stderr
    out = _run([str(INSTALL), "--prefix", "/"])
    assert out.returncode != 0 and "--prefix" in out.stderr


def test_a_work_dir_named_by_the_configuration_is_made_for_the_service(prefix_dir):
    """A --config file naming its own work_dir (the documented example: /var/lib/hpc-gateway):
    the installer creates it for the service account and says where the first password will
    be. Before, check-config passed, the directory was never made, and every start failed
    (the service account may not create it)."""
    as_root = os.geteuid() == 0
    user = _service_account(as_root)
    prefix, work = prefix_dir / "opt", prefix_dir / "lib" / "hpc-gateway"
    (prefix_dir / "lib").mkdir()
    (prefix_dir / "lib").chmod(0o755)                        # root's: the service cannot create in it
    given = prefix_dir / "given.yaml"
    given.write_text(yaml.safe_dump({"work_dir": str(work), "scheduler": {"backend": "mock"}}))
    try:
        out = _run(_installer(prefix_dir, prefix, user, _python_for(as_root), "--config", str(given)))
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        assert work.is_dir() and pwd.getpwuid(work.stat().st_uid).pw_name == user
        assert stat.S_IMODE(work.stat().st_mode) == 0o750
        assert f"{work}/initial-admin-password" in out.stdout
    finally:
        if prefix.exists():
            _run([str(INSTALL), "--uninstall", "--purge", "--prefix", str(prefix)])
        if as_root:
            subprocess.run(["userdel", user], capture_output=True)


def test_the_secret_is_never_written_through_a_link(prefix_dir):
    """secret_file often lies in a directory the service account owns: a link it put there
    must not make root write, chmod or chown another file (the installer opens the file once,
    without following links, and works on that descriptor). A hard link to a file of root's
    and a symbolic link to one are refused, and the file is left as it was."""
    as_root = os.geteuid() == 0
    user = _service_account(as_root)
    prefix, other, state = prefix_dir / "opt", prefix_dir / "opt2", prefix_dir / "state"
    state.mkdir()
    victim = prefix_dir / "victim"
    victim.write_text("root's own file\n")
    victim.chmod(0o644)
    given = prefix_dir / "given.yaml"
    given.write_text(yaml.safe_dump({"secret_file": str(state / "secret.key"), "scheduler": {"backend": "mock"}}))
    argv = _installer(prefix_dir, prefix, user, _python_for(as_root), "--config", str(given))
    try:
        for plant in (lambda p: os.link(victim, p), lambda p: p.symlink_to(victim)):
            link = state / "secret.key"
            if link.exists() or link.is_symlink():
                link.unlink()
            plant(link)
            out = _run(argv)
            assert out.returncode != 0 and "secret" in out.stderr, f"{out.stdout}\n{out.stderr}"
            st = victim.stat()
            assert victim.read_text() == "root's own file\n"
            assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.getuid(), st
        # A directory of the path that is a link of the account's (it owns state/): refused, and
        # nothing is made where it points.
        elsewhere = prefix_dir / "elsewhere"
        elsewhere.mkdir()
        (state / "keys").symlink_to(elsewhere)
        os.lchown(state / "keys", pwd.getpwnam(user).pw_uid, -1)
        deep = prefix_dir / "deep.yaml"
        deep.write_text(yaml.safe_dump({"secret_file": str(state / "keys" / "secret.key"),
                                        "scheduler": {"backend": "mock"}}))
        # (Its own prefix: an installation keeps the etc/gateway.yaml it wrote first.)
        swap = {str(given): str(deep), str(prefix): str(other)}
        out = _run([swap.get(a, a) for a in argv])
        assert out.returncode != 0 and "symbolic link of another account's" in out.stderr, out.stderr
        assert list(elsewhere.iterdir()) == []
        # Without the link, a fresh secret of the service account's, 0600.
        (state / "secret.key").unlink()
        out = _run(argv)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        st = (state / "secret.key").stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and pwd.getpwuid(st.st_uid).pw_name == user
        assert len((state / "secret.key").read_text().strip()) >= 32 and st.st_nlink == 1
    finally:
        for p in (prefix, other):
            if p.exists():
                _run([str(INSTALL), "--uninstall", "--purge", "--prefix", str(p)])
        if as_root:
            subprocess.run(["userdel", user], capture_output=True)


def test_the_unit_implies_no_new_privileges_nowhere():
    """run_as: sudo runs the setuid sudo: NoNewPrivileges, and every setting systemd turns it
    on with for a service that is not root (ProtectKernel*, ProtectClock, LockPersonality,
    RestrictRealtime, SystemCallArchitectures...), would make every sudo fail."""
    unit = (Path(__file__).resolve().parents[2] / "deploy" / "hpc-gateway.service").read_text()
    keys = {line.split("=", 1)[0].strip() for line in unit.splitlines()
            if "=" in line and not line.lstrip().startswith("#")}
    implying = {"NoNewPrivileges", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectClock", "ProtectHostname", "LockPersonality", "RestrictRealtime", "RestrictSUIDSGID",
                "RestrictNamespaces", "RestrictAddressFamilies", "MemoryDenyWriteExecute",
                "SystemCallArchitectures", "SystemCallFilter", "PrivateDevices"}
    assert not keys & implying, keys & implying
    assert "ProtectSystem" in keys


def test_a_rerun_with_another_python_rebuilds_the_venv_and_only_then(prefix_dir):
    """The venv is rebuilt when --python names another interpreter than the one it runs (before,
    any venv with a bin/python was kept, and --python was silently ignored on a re-run), and
    kept when --python is the same interpreter under another name. The other interpreter is
    a copy of the same build in another directory (any host can make one; the venv would point
    at the first file); a failed rebuild puts the previous venv back."""
    as_root = os.geteuid() == 0
    user = _service_account(as_root)
    python = Path(os.path.realpath(_python_for(as_root)))
    other = prefix_dir / "other" / "bin" / "python3"
    other.parent.mkdir(parents=True)
    shutil.copy2(python, other)
    require(_run([str(other), "-c", "import venv, ensurepip"]).returncode == 0,
            f"a copy of {python} in another directory does not run")
    alias = prefix_dir / "alias" / "python3"                   # as /usr/bin/python3 is python3.11
    alias.parent.mkdir()
    alias.symlink_to(other)
    prefix = prefix_dir / "opt"
    venv = prefix / "venv"
    try:
        out = _run(_installer(prefix_dir, prefix, user, python))
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        assert Path(os.path.realpath(venv / "bin" / "python")) == python
        (venv / "kept").write_text("the venv of the first run\n")

        # A rebuild that fails (here pip) puts back the venv that was there.
        out = _run(_installer(prefix_dir, prefix, user, other, "--pip-args", "--no-such-pip-option"))
        assert out.returncode != 0 and "rebuilding" in out.stdout, out.stdout
        assert f"put the previous {venv} back" in out.stderr, out.stderr
        assert (venv / "kept").exists() and Path(os.path.realpath(venv / "bin" / "python")) == python
        assert sorted(p.name for p in prefix.iterdir() if p.name.startswith("venv")) == ["venv"]

        out = _run(_installer(prefix_dir, prefix, user, other))
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        assert "rebuilding" in out.stdout and str(python) in out.stdout and str(other) in out.stdout, out.stdout
        assert not (venv / "kept").exists()
        assert Path(os.path.realpath(venv / "bin" / "python")) == other
        assert sorted(p.name for p in prefix.iterdir() if p.name.startswith("venv")) == ["venv"]
        # Built where it runs: a venv is not relocatable (its scripts name their python).
        assert (venv / "bin" / "hpc-gateway").read_text().startswith(f"#!{venv}/bin/python")
        check = _run([str(prefix / "bin" / "hpc-gateway"), "check-config"])
        assert check.returncode == 0, check.stderr

        # The same interpreter under another name: the venv stays.
        (venv / "kept").write_text("the rebuilt venv\n")
        out = _run(_installer(prefix_dir, prefix, user, alias))
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        assert "rebuild" not in out.stdout and (venv / "kept").exists(), out.stdout

        # A rebuild whose configuration then fails to load (check-config, after pip) puts the
        # previous venv back too.
        conf = prefix / "etc" / "gateway.yaml"
        good = conf.read_text()
        conf.write_text(yaml.safe_dump({**yaml.safe_load(good), "scheduler": {"backend": "no_such_backend"}}))
        out = _run(_installer(prefix_dir, prefix, user, python))
        assert out.returncode != 0 and "does not load" in out.stderr, f"{out.stdout}\n{out.stderr}"
        assert f"put the previous {venv} back" in out.stderr, out.stderr
        assert (venv / "kept").exists() and Path(os.path.realpath(venv / "bin" / "python")) == other
        conf.write_text(good)

        # An installer killed while it rebuilt (no EXIT trap: venv.previous and a half-made
        # venv left): the next run puts venv.previous back before it decides.
        venv.rename(prefix / "venv.previous")
        (venv / "bin").mkdir(parents=True)                    # half made: no python yet
        out = _run(_installer(prefix_dir, prefix, user, alias))
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        assert "putting back" in out.stdout and "rebuild" not in out.stdout, out.stdout
        assert (venv / "kept").exists()
        assert sorted(p.name for p in prefix.iterdir() if p.name.startswith("venv")) == ["venv"]
    finally:
        if prefix.exists():
            _run([str(INSTALL), "--uninstall", "--purge", "--prefix", str(prefix)])
        if as_root:
            subprocess.run(["userdel", user], capture_output=True)


def test_ownership_is_never_given_through_a_hard_link(prefix_dir):
    """Root gives var/ and log/ to the service account on every run. Where
    fs.protected_hardlinks is 0 that account may hard-link any file of root's on the same file
    system into them (e.g. /etc/shadow), and chown -R gave it away. With the sysctl at 1 (this
    host's, Debian's default) the account can make no such link, and chown -R stays (a file
    root made there becomes the account's). With it at 0 (a file holding 0 bind-mounted over
    it in a mount namespace of the installer's own; root plants the links, as the account
    could there) only var/ and log/ change owner, and what in them is not the account's is
    named, not given."""
    if os.geteuid() != 0:
        pytest.skip("only root changes the ownership of var/ and log/")
    with open("/proc/sys/fs/protected_hardlinks") as fh:
        require(fh.read().strip() == "1", "this host's fs.protected_hardlinks is not 1")
    require(_run(["unshare", "-m", "true"]).returncode == 0, "unshare -m does not work here")
    user = f"hpcgw-t{secrets.token_hex(3)}"
    prefix = prefix_dir / "opt"
    victims = {}
    for name in ("shadow", "passwd", "target"):
        victims[name] = prefix_dir / name
        victims[name].write_text(f"root's {name}\n")
        victims[name].chmod(0o640)
    zero = prefix_dir / "protected_hardlinks"
    zero.write_text("0\n")
    argv = _installer(prefix_dir, prefix, user, _python_for(True))
    unprotected = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /proc/sys/fs/protected_hardlinks && exec "$@"',
                   str(zero), *argv]
    try:
        out = _run(argv)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        var, log = prefix / "var", prefix / "log"
        uid = pwd.getpwnam(user).pw_uid
        # Protected (this host): chown -R, a file root made there is the account's.
        (var / "deep" / "er").mkdir(parents=True)
        (var / "deep" / "er" / "own").write_text("root made it, the service's now\n")
        out = _run(argv)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        for mine in (var, var / "deep", var / "deep" / "er", var / "deep" / "er" / "own", log):
            assert mine.lstat().st_uid == uid, mine

        # Unprotected: the links the account could make there.
        os.link(victims["shadow"], var / "planted")
        os.link(victims["passwd"], var / "deep" / "er" / "planted")
        os.link(victims["passwd"], log / "planted")
        (var / "link").symlink_to(victims["target"])
        (log / "old.log").write_text("root's, one name\n")
        out = _run(unprotected)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
        for victim in victims.values():
            st = victim.stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o640), (victim, st)
        assert "fs.protected_hardlinks is not 1" in out.stderr, out.stderr
        for named in (var / "planted", var / "deep" / "er" / "planted", log / "planted", var / "link",
                      log / "old.log"):
            assert f"  {named}\n" in out.stderr, (named, out.stderr)
            assert named.lstat().st_uid == 0, named
        for mine in (var, log, var / "deep" / "er" / "own"):
            assert mine.lstat().st_uid == uid and f"  {mine}\n" not in out.stderr, mine
    finally:
        if prefix.exists():
            _run([str(INSTALL), "--uninstall", "--purge", "--prefix", str(prefix)])
        subprocess.run(["userdel", user], capture_output=True)
