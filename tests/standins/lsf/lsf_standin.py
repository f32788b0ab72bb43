#!/usr/bin/python3
"""TEST DOUBLE — a small stateful stand-in for an LSF-style scheduler (OpenLava/volclava
b-commands and SkyForm AIP c-commands). It is NOT a scheduler: it exists so the gateway's
``aip`` plugin can be tested where no licensed AIP/LSF can be installed.

One file, standard library only. Installed (by ``tests/standins/lsf/__init__.py``) into a
cluster directory as ``bin/lsf_standin.py`` plus symlinks named after the commands
(``bsub``, ``bjobs``, ... and ``csub``, ``cjobs``, ...): the name it is called by selects the
command, and a c-name selects AIP's wording (``Job 427 has been submitted to the default
queue [medium].``). The cluster is found through ``LSF_ENVDIR`` (set by the cluster's
profile file, like AIP's ``aip.sh``) or, failing that, ``../etc`` next to the program.

It prints the formats and messages a real OpenLava 2.2 scheduler prints (see
tests/plugins/aip/fixtures/openlava-2.2/) and really runs jobs: a daemon (``lsf_standin.py
_daemon``, the stand-in's mbatchd/sbatchd; root when the tests run as root) schedules pending
jobs onto the configured slots and starts each job as its owner in its own process group;
kill/stop/resume are signals to that group; ``-H`` holds (PSUSP); ``-o``/``-e`` files get the
mail-style report LSF writes; ``bpeek`` shows the output of a running job. Commands change
the state (a JSON file under ``state/``, guarded by ``flock``) as the invoking Unix user and
wake the daemon through a datagram socket. The state directory is world-writable: fine for
a test double, never for anything else.

When the daemon is down, commands behave like LSF's clients: with ``LSB_NTRIES`` set they
fail at once with ``Failed in an LSF library call: LIM is down; try later``; without, they
print ``LSF daemon (LIM) not responding ... still trying`` and wait.
"""
from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

PROG = os.path.abspath(sys.argv[0]) if sys.argv else __file__

B_NAMES = {"bsub", "bjobs", "bkill", "bstop", "bresume", "brequeue", "bhosts", "bqueues",
           "busers", "bhist", "bpeek", "badmin", "bparams", "lsid", "bmod", "bswitch"}
C_NAMES = {"csub": "bsub", "cjobs": "bjobs", "ckill": "bkill", "cstop": "bstop",
           "cresume": "bresume", "chosts": "bhosts", "cqueues": "bqueues", "chist": "bhist",
           "cread": "bpeek"}

FINAL = ("DONE", "EXIT")
ACTIVE = ("RUN", "USUSP", "SSUSP")
SEPARATOR = "-" * 78


class Fail(Exception):
    """Print ``msg`` (to stderr unless ``out``) and exit with ``rc``."""

    def __init__(self, msg: str, rc: int = 255, out: bool = False):
        super().__init__(msg)
        self.msg, self.rc, self.out = msg, rc, out


# ============================================================================ cluster + state

class Cluster:
    def __init__(self, style: str = "b"):
        self.style = style
        envdir = os.environ.get("LSF_ENVDIR") or os.path.join(os.path.dirname(PROG), "..", "etc")
        self.envdir = os.path.abspath(envdir)
        conf = os.path.join(self.envdir, "lsf.standin.json")
        try:
            with open(conf) as fh:
                self.conf = json.load(fh)
        except OSError as exc:
            raise Fail(f"Failed in an {self.lib} library call: cannot read {conf}: {exc.strerror}")
        self.state_dir = self.conf["state_dir"]
        self.spool = os.path.join(self.state_dir, "spool")
        self.me = pwd.getpwuid(os.getuid()).pw_name
        self.host = self.conf["hosts"][0]["name"]

    @property
    def lib(self) -> str:
        return "AIP" if self.style == "c" else "LSF"

    # -- daemon liveness --------------------------------------------------------------
    def daemon_pid(self) -> int | None:
        try:
            with open(os.path.join(self.state_dir, "daemon.pid")) as fh:
                pid = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            return None
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def require_daemon(self, fail_msg: str) -> None:
        if self.daemon_pid():
            return
        if os.environ.get("LSB_NTRIES"):
            raise Fail(fail_msg.format(lib=self.lib))
        sys.stderr.write(f"{self.lib} daemon (LIM) not responding ... still trying\n")
        sys.stderr.flush()
        while not self.daemon_pid():
            time.sleep(0.5)

    # -- state --------------------------------------------------------------------------
    def locked(self, exclusive: bool = True):
        return _Locked(self, exclusive)

    def wake(self) -> None:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(b"w", os.path.join(self.state_dir, "wake.sock"))
            s.close()
        except OSError:
            pass

    def is_admin(self, user: str | None = None) -> bool:
        user = user or self.me
        return user == "root" or user in self.conf.get("admins", [])

    def queue_conf(self, name: str) -> dict | None:
        return next((q for q in self.conf["queues"] if q["name"] == name), None)

    def may_use(self, qconf: dict) -> bool:
        """A queue's USERS (lsb.queues; absent: all users). An LSF administrator (or root)
        may submit to any queue and move anyone's jobs into it (OpenLava's acceptJob)."""
        users = qconf.get("users")
        return users is None or self.is_admin() or self.me in users

    def default_queue(self) -> str:
        return next((q["name"] for q in self.conf["queues"] if q.get("default")),
                    self.conf["queues"][0]["name"])


class _Locked:
    def __init__(self, cluster: Cluster, exclusive: bool):
        self.c, self.exclusive = cluster, exclusive

    def __enter__(self) -> dict:
        old = os.umask(0)
        try:
            self.fd = os.open(os.path.join(self.c.state_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o666)
        finally:
            os.umask(old)
        fcntl.flock(self.fd, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)
        self.state = load_state(self.c)
        self.before = json.dumps(self.state, sort_keys=True)
        return self.state

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None and self.exclusive and json.dumps(self.state, sort_keys=True) != self.before:
                save_state(self.c, self.state)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        return False


def load_state(c: Cluster) -> dict:
    try:
        with open(os.path.join(c.state_dir, "state.json")) as fh:
            state = json.load(fh)
    except FileNotFoundError:
        state = {}
    state.setdefault("next_id", int(c.conf.get("first_job_id", 1)))
    state.setdefault("jobs", {})
    state.setdefault("hosts", {h["name"]: {"closed": False} for h in c.conf["hosts"]})
    state.setdefault("queues", {q["name"]: {"open": True, "active": True} for q in c.conf["queues"]})
    return state


def save_state(c: Cluster, state: dict) -> None:
    path = os.path.join(c.state_dir, "state.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    old = os.umask(0)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    finally:
        os.umask(old)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh)
    os.replace(tmp, path)


# ============================================================================ formatting

def fmt_submit_short(t: float) -> str:          # "Nov 22 00:51"
    lt = time.localtime(t)
    return f"{time.strftime('%b', lt)} {lt.tm_mday:>2} {time.strftime('%H:%M', lt)}"


def fmt_slash(t: float | None) -> str:          # "11/22-00:51:25"
    return time.strftime("%m/%d-%H:%M:%S", time.localtime(t)) if t else "-"


def fmt_long(t: float) -> str:                  # "Sun Nov 22 00:51:25"
    lt = time.localtime(t)
    return f"{time.strftime('%a %b', lt)} {lt.tm_mday:>2} {time.strftime('%H:%M:%S', lt)}"


def fmt_report(t: float) -> str:                # "Sun Nov 22 00:51:25 2026"
    lt = time.localtime(t)
    return f"{time.strftime('%a %b', lt)} {lt.tm_mday:>2} {time.strftime('%H:%M:%S %Y', lt)}"


def home_of(user: str) -> str:
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return "/"


def cwd_display(cwd: str, home: str) -> str:
    if home and home != "/" and (cwd == home or cwd.startswith(home.rstrip("/") + "/")):
        return "$HOME" + cwd[len(home.rstrip("/")):]
    return cwd


def job_key_sort(key: str):
    base, _, idx = key.partition("[")
    return int(base), int(idx.rstrip("]") or 0)


def spool_name(key: str) -> str:
    return key.replace("[", "_").replace("]", "")


def expand_path(pattern: str, job: dict) -> str:
    path = pattern.replace("%J", str(job["base"])).replace("%I", str(job.get("index") or 0))
    if not path.startswith("/"):
        path = os.path.join(job["cwd"], path)
    return path


# ============================================================================ bsub

BSUB_OPTS_WITH_ARG = {"-J", "-q", "-n", "-R", "-M", "-W", "-cwd", "-o", "-oo", "-e", "-eo", "-w",
                      "-P", "-b", "-t", "-c", "-F", "-D", "-S", "-G", "-sp", "-m", "-u", "-L",
                      "-i", "-Jd", "-app", "-gpu", "-U", "-g", "-sla", "-We", "-v", "-T", "-C",
                      "-p"}
BSUB_FLAGS = {"-H", "-x", "-r", "-rn", "-N", "-B", "-ul"}
BSUB_USAGE = """Usage: bsub [-h] [-V] [-x] [-H] [-r] [-N] [-B] [-I | -K | -Ip | -Is]
\t\t[-L login_shell] [-c cpu_limit[/host_spec]] [-F file_limit]
\t\t[-W run_limit[/host_spec]] [-k chkpnt_dir [chkpnt_period] [method=chkpnt_dir]]
\t\t[-P project_name] 
\t\t[-q queue_name ...]  [-R res_req]
\t\t[-m "host_name[+[pref_level]] | host_group[+[pref_level]]...]"
\t\t[-n min_processors[,max_processors]] [-J job_name] [-Jd job_desc]
\t\t[-b begin_time] [-t term_time] [-u mail_user]
\t\t[-i in_file | -is in_file] [-o out_file] [-e err_file]
\t\t[-M mem_limit]  [-D data_limit]  [-S stack_limit]
\t\t[[-f "lfile op [rfile]"] ...] [-w depend_cond]
\t\t[-E "pre_exec_command [argument ...]"] [-Zs]
\t\t[-Ep "post_exec_command [argument ...]"
\t\t[-sp job_priority]
\t\t[-pack job_submission_file]
\t\t[-a additional_esub_information]
\t\tcommand [argument ...]"""


def parse_bsub_args(args: list[str], opts: dict) -> list[str]:
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return args[i + 1:]
        if not a.startswith("-") or a == "-":
            return args[i:]
        if a in BSUB_FLAGS:
            opts[a] = True
            i += 1
            continue
        if a in BSUB_OPTS_WITH_ARG:
            if i + 1 >= len(args):
                raise Fail(f"bsub: option requires an argument -- {a[1:]}\n{BSUB_USAGE}")
            if a == "-R":
                opts.setdefault("-R", []).append(args[i + 1])
            else:
                opts[a] = args[i + 1]
            i += 2
            continue
        raise Fail(f"bsub: illegal option -- {a[1:2]}\n{BSUB_USAGE}")
    return []


def parse_array(spec: str):
    """'name[1-3]%2' -> (name, [1,2,3], 2); plain name -> (name, None, None)."""
    m = re.fullmatch(r"(?P<name>[^\[\]]*)\[(?P<rng>[^\]]+)\](?:%(?P<lim>\d+))?", spec)
    if not m:
        if "[" in spec or "]" in spec:
            raise Fail("Bad job name. Job not submitted.")
        return spec, None, None
    indexes = []
    for part in m.group("rng").split(","):
        pm = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if not pm:
            raise Fail("Job array index error. Job not submitted.")
        lo = int(pm.group(1))
        hi = int(pm.group(2) or lo)
        step = int(pm.group(3) or 1)
        if hi < lo or step < 1 or hi - lo > 100000:
            raise Fail("Job array index error. Job not submitted.")
        indexes.extend(range(lo, hi + 1, step))
    return m.group("name"), sorted(set(indexes)), int(m.group("lim")) if m.group("lim") else None


DEP_TOKEN = re.compile(r"\s*(?:(?P<func>done|ended|exit|started|post_done|post_err|numdone|numended)"
                       r"\(\s*(?P<arg>[^)]*)\)|(?P<id>\d+(?:\[\d+\])?)|(?P<op>&&|\|\||!|\(|\)))")


def dep_refs(expr: str) -> list[tuple[str, str]]:
    """Validate a dependency expression; return its (func, job) references."""
    pos, refs, py = 0, [], []
    expr = expr.strip()
    while pos < len(expr):
        m = DEP_TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise Fail("Dependency condition syntax error. Job not submitted.")
        pos = m.end()
        if m.group("func"):
            arg = m.group("arg").split(",")[0].strip().strip('"')
            refs.append((m.group("func"), arg))
            py.append("True")
        elif m.group("id"):
            refs.append(("done", m.group("id")))
            py.append("True")
        else:
            py.append({"&&": " and ", "||": " or ", "!": " not "}.get(m.group("op"), m.group("op")))
    try:
        eval(compile("".join(py) or "True", "<dep>", "eval"), {"__builtins__": {}}, {})
    except SyntaxError:
        raise Fail("Dependency condition syntax error. Job not submitted.") from None
    return refs


def dep_satisfied(expr: str | None, state: dict) -> bool | None:
    """True/False when decidable now; None if it never can be (a referenced job is gone)."""
    if not expr:
        return True
    out = []
    pos = 0
    while pos < len(expr.strip()):
        m = DEP_TOKEN.match(expr.strip(), pos)
        pos = m.end()
        if m.group("func") or m.group("id"):
            func = m.group("func") or "done"
            ref = (m.group("arg") or m.group("id")).split(",")[0].strip().strip('"')
            jobs = [j for k, j in state["jobs"].items() if k == ref or str(j["base"]) == ref]
            if not jobs:
                return None
            stats = [j["status"] for j in jobs]
            val = {
                "done": all(s == "DONE" for s in stats),
                "post_done": all(s == "DONE" for s in stats),
                "exit": all(s == "EXIT" for s in stats),
                "post_err": all(s == "EXIT" for s in stats),
                "ended": all(s in FINAL for s in stats),
                "started": all(s not in ("PEND", "PSUSP") for s in stats),
            }.get(func, all(s in FINAL for s in stats))
            out.append("True" if val else "False")
        else:
            out.append({"&&": " and ", "||": " or ", "!": " not "}.get(m.group("op"), m.group("op")))
    return bool(eval(compile("".join(out), "<dep>", "eval"), {"__builtins__": {}}, {}))


def cmd_bsub(c: Cluster, args: list[str]) -> int:
    opts: dict = {}
    words = parse_bsub_args(args, opts)
    script = None
    if words:
        command = " ".join(words)
    else:
        if sys.stdin.isatty():
            raise Fail("No command is specified. Job not submitted.")
        script = sys.stdin.read()
        # #BSUB lines in a script are options (the command line wins)
        embedded: dict = {}
        for line in script.splitlines():
            if line.startswith("#BSUB"):
                try:
                    parse_bsub_args(shlex.split(line[5:]), embedded)
                except ValueError:
                    raise Fail("Bad argument. Job not submitted.") from None
        for k, v in embedded.items():
            opts.setdefault(k, v)
        if not script.strip():
            raise Fail("No command is specified. Job not submitted.")
        command = ";".join(ln for ln in script.splitlines() if ln.strip()) or script
    c.require_daemon("Failed in an {lib} library call: LIM is down; try later. Job not submitted.")
    if c.style == "c" and os.path.exists(os.path.join(c.state_dir, "fail-auth")):
        # AIP's csub has been seen to print this and still exit 0
        print("Failed in an AIP library call: Authentication failed. Job not submitted.")
        return 0
    queue = opts.get("-q") or c.default_queue()
    qconf = c.queue_conf(queue)
    if qconf is None:
        raise Fail(f"{queue}: No such queue. Job not submitted.")
    if opts.get("-J") is None:
        # LSF names an unnamed job after its command
        name, indexes, limit = (command if words else "NONAME"), None, None
    else:
        name, indexes, limit = parse_array(opts["-J"])
    try:
        procs = int(str(opts.get("-n", "1")).split(",")[0])
        if procs < 1:
            raise ValueError
    except ValueError:
        raise Fail("Bad argument. Job not submitted.") from None
    for r in opts.get("-R", []):
        if r.count("[") != r.count("]"):
            raise Fail("Bad resource requirement syntax. Job not submitted.")
    run_limit = None
    if "-W" in opts:
        m = re.fullmatch(r"(?:(\d+):)?(\d+)", opts["-W"])
        if not m:
            raise Fail("Bad argument. Job not submitted.")
        run_limit = int(m.group(1) or 0) * 60 + int(m.group(2))
    mem_limit = None
    if "-M" in opts:
        if not re.fullmatch(r"\d+", opts["-M"]):
            raise Fail("Bad argument. Job not submitted.")
        mem_limit = int(opts["-M"])
    dep = opts.get("-w")
    cwd = opts.get("-cwd") or os.getcwd()
    if not cwd.startswith("/"):
        cwd = os.path.join(os.getcwd(), cwd)
    env = dict(os.environ)
    now = time.time()
    with c.locked() as state:
        # OpenLava's acceptJob order: closed, the queue's users, its hard limits
        if not state["queues"][queue]["open"]:
            raise Fail(f"{queue}: Queue has been closed. Job not submitted.")
        if not c.may_use(qconf):
            raise Fail(f"{queue}: User cannot use the queue. Job not submitted.")
        if over_queue_limit(qconf, run_limit):
            raise Fail("RUNLIMIT: Cannot exceed queue's hard limit(s). Job not submitted.")
        if dep:
            for _func, ref in dep_refs(dep):
                if not any(k == ref or str(j["base"]) == ref for k, j in state["jobs"].items()):
                    raise Fail(f"{ref}: No matching job found. Job not submitted.")
        job_id = state["next_id"]
        state["next_id"] += 1
        common = {
            "base": job_id, "user": c.me, "queue": queue, "submit_time": now,
            "from_host": socket.gethostname().split(".")[0], "project": opts.get("-P", "default"),
            "command": command, "script": script, "cwd": cwd, "home": home_of(c.me),
            "output": opts.get("-o") or opts.get("-oo"), "error": opts.get("-e") or opts.get("-eo"),
            "processors": procs, "resources": opts.get("-R", []), "run_limit": run_limit,
            "mem_limit": mem_limit, "dependency": dep, "env": env, "array_limit": limit,
            "status": "PSUSP" if opts.get("-H") else "PEND", "start_time": None,
            "end_time": None, "exit_code": None, "signal": None, "exec_host": None,
            "pid": None, "signals": [], "killed": False, "term": None,
            "events": [[now, "submit", {}]], "runs": 0, "requeue": False,
        }
        if opts.get("-H"):
            common["events"].append([now, "psusp", {"by": c.me}])
        if indexes is None:
            state["jobs"][str(job_id)] = dict(common, name=name or "NONAME", index=None)
        else:
            for i in indexes:
                state["jobs"][f"{job_id}[{i}]"] = dict(common, name=f"{name}[{i}]", index=i,
                                                       events=[list(e) for e in common["events"]])
    c.wake()
    default = "-q" not in opts
    if c.style == "c":
        print(f"Job {job_id} has been submitted to {'the default ' if default else ''}queue [{queue}].")
    else:
        print(f"Job <{job_id}> is submitted to {'default ' if default else ''}queue <{queue}>.")
    return 0


# ============================================================================ bjobs

JSON_FIELDS = ["JOBID", "USER", "STAT", "QUEUE", "FROM_HOST", "EXEC_HOST", "JOB_NAME",
               "SUBMIT_TIME", "PROJ_NAME", "CPU_USED", "MEM", "SWAP", "PIDS", "START_TIME",
               "FINISH_TIME"]


def field_value(job: dict, f: str) -> str:
    return {
        "JOBID": str(job["base"]), "USER": job["user"], "STAT": job["status"],
        "QUEUE": job["queue"], "FROM_HOST": job["from_host"],
        "EXEC_HOST": job["exec_host"] or "", "JOB_NAME": job["name"],
        "SUBMIT_TIME": fmt_submit_short(job["submit_time"]), "PROJ_NAME": job["project"],
        "CPU_USED": "0.0 second(s)", "MEM": "0 Mbytes", "SWAP": "0 Mbytes",
        "PIDS": str(job["pid"] or ""), "START_TIME": fmt_slash(job["start_time"]),
        "FINISH_TIME": fmt_slash(job["end_time"]),
    }[f]


def select_jobs(c: Cluster, state: dict, opts: dict, ids: list[str]) -> tuple[list, list]:
    jobs = state["jobs"]
    if ids:
        found, missing = [], []
        for jid in ids:
            keys = [k for k in jobs if k == jid or (("[" not in jid) and str(jobs[k]["base"]) == jid)]
            if not keys:
                missing.append(jid)
            found.extend(k for k in keys if k not in found)
        return found, missing
    user = opts.get("-u", c.me)
    keys = []
    for k in sorted(jobs, key=job_key_sort):
        j = jobs[k]
        if user != "all" and j["user"] != user:
            continue
        if "-a" not in opts and j["status"] in FINAL:
            continue
        if opts.get("-q") and j["queue"] != opts["-q"]:
            continue
        if opts.get("-J") and j["name"] != opts["-J"] and not (
                re.sub(r"\[\d+\]$", "", j["name"]) == opts["-J"]):
            continue
        keys.append(k)
    # LSF lists running jobs first, then pending, then finished (most recent first)
    order = {"RUN": 0, "USUSP": 0, "SSUSP": 0, "PEND": 1, "PSUSP": 1, "DONE": 2, "EXIT": 2}
    keys.sort(key=lambda k: (order.get(jobs[k]["status"], 3), -jobs[k]["submit_time"] if
                             order.get(jobs[k]["status"]) == 0 else 0, job_key_sort(k)))
    return keys, []


def cmd_bjobs(c: Cluster, args: list[str]) -> int:
    opts: dict = {}
    ids: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-a", "-w", "-l", "-json", "-r", "-p", "-s", "-d", "-A"):
            opts[a] = True
            i += 1
        elif a in ("-u", "-q", "-J", "-o", "-m", "-P", "-g"):
            if i + 1 >= len(args):
                raise Fail(f"bjobs: option requires an argument -- {a[1:]}")
            opts[a] = args[i + 1]
            i += 2
        elif a.startswith("-"):
            raise Fail(f"bjobs: illegal option -- {a[1:2]}")
        else:
            if not re.fullmatch(r"\d+(?:\[\d+\])?", a):
                raise Fail(f"{a}: Illegal job ID.")
            ids.append(a)
            i += 1
    c.require_daemon("Failed in an {lib} library call: LIM is down; try later")
    if opts.get("-q") and c.queue_conf(opts["-q"]) is None:
        raise Fail(f"{opts['-q']}: No such queue")
    fields = None
    if "-o" in opts:
        fields = opts["-o"].split()
        for f in fields:
            if f.upper() not in JSON_FIELDS:
                raise Fail(f"<{f.upper()}> in the format string is not a valid field name.", rc=99)
        fields = [f.upper() for f in fields]
    with c.locked(exclusive=False) as state:
        keys, missing = select_jobs(c, state, opts, ids)
        jobs = [state["jobs"][k] for k in keys]
        if "-l" in opts:
            return print_long(c, state, keys, missing, opts)
    if fields and "-json" in opts:
        records = [{f: field_value(j, f) for f in fields} for j in jobs]
        for m in missing:
            records.append({"JOBID": m, "ERROR": f"Job <{m}> is not found"})
        out = ["{", '\t"COMMAND":\t"bjobs",', f'\t"JOBS":\t{len(records)},']
        if not records:
            out.append('\t"RECORDS":\t[]')
        else:
            parts = []
            for r in records:
                body = ",\n".join(f"\t\t\t{json.dumps(k)}:\t{json.dumps(v)}" for k, v in r.items())
                parts.append(body)
            out.append('\t"RECORDS":\t[{\n' + "\n\t\t}, {\n".join(parts) + "\n\t\t}]")
        out.append("}")
        print("\n".join(out))
        return 255 if (missing or not jobs) else 0
    for m in missing:
        sys.stderr.write(f"Job <{m}> is not found\n")
    if not jobs:
        if not missing:
            if "-a" in opts:
                print("No job found")
                return 255
            print("No unfinished job found")
            return 254
        return 255
    if fields:
        print(" ".join(fields))
        for j in jobs:
            print(" ".join(field_value(j, f) for f in fields))
        return 0
    wide = "-w" in opts
    print("JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME")
    for j in jobs:
        user, name = j["user"], j["name"]
        exec_host = j["exec_host"] or ""
        if wide:
            exec_col = f"{exec_host:<11}" if exec_host else "   -       "
        else:
            user = user[:7]
            name = name if len(name) <= 10 else "*" + name[-9:]
            exec_col = f"{exec_host:<11}"
        print(f"{str(j['base']):<7} {user:<7} {j['status']:<5} {j['queue']:<10} "
              f"{j['from_host']:<11} {exec_col} {name:<10} {fmt_submit_short(j['submit_time'])}")
    return 255 if missing else 0


def limit_lines(j: dict) -> list[str]:
    out = []
    if j.get("run_limit"):
        out += ["", f" {'RUNLIMIT':<24}", f" {j['run_limit']:.1f} min of {j['exec_host'] or j['from_host']}"]
    if j.get("mem_limit"):
        out += ["", " MEMLIMIT", f" {j['mem_limit']:>6} K"]
    return out


def submitted_line(j: dict, with_queue: bool) -> str:
    parts = [f"Submitted from host <{j['from_host']}>"]
    if with_queue:
        parts.append(f"to Queue <{j['queue']}>")
    parts.append(f"CWD <{cwd_display(j['cwd'], j['home'])}>")
    if j["output"]:
        parts.append(f"Output File <{j['output']}>")
    if j["error"]:
        parts.append(f"Error File <{j['error']}>")
    if j["processors"] > 1:
        parts.append(f"{j['processors']} Processors Requested")
    if j["resources"]:
        parts.append(f"Requested Resources <{' '.join(j['resources'])}>")
    if j.get("dependency"):
        parts.append(f"Dependency Condition <{j['dependency']}>")
    return f"{fmt_long(j['submit_time'])}: " + ", ".join(parts) + ";"


def started_where(j: dict) -> str:
    if j["processors"] > 1:
        return f"{j['processors']} Hosts/Processors " + " ".join(f"<{j['exec_host']}>" for _ in range(j["processors"]))
    return f"<{j['exec_host']}>"


def finish_line(j: dict) -> str | None:
    if j["status"] == "DONE":
        return f"{fmt_long(j['end_time'])}: Done successfully. The CPU time used is 0.0 seconds."
    if j["status"] == "EXIT":
        if j.get("signal"):
            what = f"Exited by signal {j['signal']}"
        elif j.get("exit_code") is not None:
            what = f"Exited with exit code {j['exit_code']}"
        else:
            what = "Exited"
        return f"{fmt_long(j['end_time'])}: {what}. The CPU time used is 0.0 seconds."
    return None


def pending_reason(c: Cluster, state: dict, j: dict) -> str:
    if j["status"] == "PSUSP":
        return "The job was suspended by the user while pending;"
    if not state["queues"][j["queue"]]["active"]:
        return "The queue is inactivated by the administrator;"
    dep = dep_satisfied(j.get("dependency"), state)
    if dep is None:
        return "Dependency condition invalid or never satisfied;"
    if dep is False:
        return "Job dependency condition not satisfied;"
    if all(state["hosts"][h["name"]]["closed"] for h in c.conf["hosts"]):
        return f"Closed by LSF administrator: {len(c.conf['hosts'])} host;"
    return f"Not enough job slot(s): {len(c.conf['hosts'])} host;"


SCHED_PARAMS = [
    "",
    " SCHEDULING PARAMETERS:",
    "           r15s   r1m  r15m   ut      pg    io   ls    it    tmp    swp    mem",
    " loadSched   -     -     -     -       -     -    -     -     -      -      -  ",
    " loadStop    -     -     -     -       -     -    -     -     -      -      -  ",
    "",
    " RESOURCE REQUIREMENT DETAILS:",
]


def print_long(c: Cluster, state: dict, keys: list[str], missing: list[str], opts: dict) -> int:
    blocks = []
    for k in keys:
        j = state["jobs"][k]
        jid = k
        lines = ["", f"Job <{jid}>, Job Name <{j['name']}>, User <{j['user']}>, Project <{j['project']}>, "
                     f"Status <{j['status']}>, Queue <{j['queue']}>, Command <{j['command']}>"]
        lines.append(submitted_line(j, with_queue=False))
        lines += limit_lines(j)
        if j["start_time"]:
            lines.append(f"{fmt_long(j['start_time'])}: Started on {started_where(j)}, Execution Home "
                         f"<{j['home']}>, Execution CWD <{j['cwd']}>;")
        for t, kind, data in j["events"]:
            if kind == "ususp" and j["status"] == "USUSP":
                lines.append(f"{fmt_long(t)}: Suspended by the user or administrator;")
        fin = finish_line(j)
        if fin:
            lines.append(fin)
            if j.get("term"):
                lines.append(f"{fmt_long(j['end_time'])}: Completed <exit>; {j['term']}")
        if j["status"] in ("PEND", "PSUSP"):
            lines += [" PENDING REASONS:", " " + pending_reason(c, state, j)]
        lines += SCHED_PARAMS
        lines.append(" Combined: select[type == local] order[r15s:pg]")
        lines.append(" Effective: " + ("select[type == local] order[r15s:pg]" if j["start_time"] else "-"))
        lines.append("")
        blocks.append("\n".join(lines))
    for m in missing:
        sys.stderr.write(f"Job <{m}> is not found\n")
    if blocks:
        print(("\n" + SEPARATOR + "\n").join(blocks))
    elif not missing:
        print("No unfinished job found" if "-a" not in opts else "No job found")
        return 255
    return 255 if missing else 0


# ============================================================================ bhist

def cmd_bhist(c: Cluster, args: list[str]) -> int:
    opts: dict = {}
    ids = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-l", "-a", "-d", "-p", "-r", "-s", "-w", "-b"):
            opts[a] = True
            i += 1
        elif a in ("-u", "-q", "-J", "-m", "-n", "-C", "-S", "-D", "-f"):
            opts[a] = args[i + 1] if i + 1 < len(args) else ""
            i += 2
        elif a.startswith("-"):
            raise Fail(f"bhist: illegal option -- {a[1:2]}")
        else:
            ids.append(a)
            i += 1
    c.require_daemon("Failed in an {lib} library call: LIM is down; try later")
    with c.locked(exclusive=False) as state:
        # the event log still has the jobs mbatchd cleaned (clean_period)
        state = {**state, "jobs": {**state.get("cleaned", {}), **state["jobs"]}}
        if ids:
            keys, _missing = select_jobs(c, state, {}, ids)
        else:
            opts.setdefault("-a", True)
            keys, _ = select_jobs(c, state, opts, [])
        if not keys:
            raise Fail("No matching job found")
        now = time.time()
        if "-l" not in opts:
            print("Summary of time in seconds spent in various states:")
            print("JOBID   USER    JOB_NAME  PEND    PSUSP   RUN     USUSP   SSUSP   UNKWN   TOTAL")
            for k in keys:
                j = state["jobs"][k]
                pend, run = times_of(j, now)
                print(f"{str(j['base']):<7} {j['user'][:7]:<7} {j['name'][:9]:<9} {pend:<7} 0       "
                      f"{run:<7} 0       0       0       {pend + run:<10}")
            print()
            return 0
        blocks = []
        for k in keys:
            j = state["jobs"][k]
            lines = ["", f"Job <{k}>, Job Name <{j['name']}>, User <{j['user']}>, Project <{j['project']}>, "
                         f"Command <{j['command']}>"]
            for t, kind, data in j["events"]:
                lines += event_lines(j, t, kind, data)
            pend, run = times_of(j, now)
            lines += ["", f"Summary of time in seconds spent in various states by  {fmt_long(now)}",
                      "  PEND     PSUSP    RUN      USUSP    SSUSP    UNKWN    TOTAL",
                      f"  {pend:<8} 0        {run:<8} 0        0        0        {pend + run:<12}", ""]
            blocks.append("\n".join(lines))
        print(("\n" + SEPARATOR + "\n").join(blocks))
    return 0


def times_of(j: dict, now: float) -> tuple[int, int]:
    start = j["start_time"]
    end = j["end_time"] or now
    pend = int((start or end) - j["submit_time"])
    run = int(end - start) if start else 0
    return max(pend, 0), max(run, 0)


def event_lines(j: dict, t: float, kind: str, data: dict) -> list[str]:
    ts = fmt_long(t)
    if kind == "submit":
        # the queue it was submitted to: the first switch's "from", if it moved since
        first = next((d["from"] for _, k, d in j["events"] if k == "switch"), j["queue"])
        return [submitted_line(dict(j, submit_time=t, queue=first), with_queue=True)]
    if kind == "switch":
        return [f"{ts}: Switched to Queue <{data['to']}> by user or administrator <{data['by']}>;"]
    if kind == "modify":
        what = []
        if data.get("name") is not None:
            what.append(f"Job name changes to : {data['name']}")
        if data.get("run_limit") is not None:
            what.append(f"RUNLIMIT changes to : {float(data['run_limit']):.1f} min")
        return [f"{ts}: Parameters of Job are changed by user or administrator <{data['by']}>"
                + (": " + "; ".join(what) if what else "") + ";"]
    if kind == "start":
        return [f"{ts}: Dispatched to {started_where(dict(j, exec_host=data.get('host')))};",
                f"{ts}: Starting (Pid {data.get('pid')});",
                f"{ts}: Running with execution home <{j['home']}>, Execution CWD <{j['cwd']}>, "
                f"Execution Pid <{data.get('pid')}>;"]
    if kind == "signal":
        return [f"{ts}: Signal <{data['sig']}> requested by user or administrator <{data['by']}>;"]
    if kind == "ususp":
        return [f"{ts}: Suspended by the user or administrator <{data['by']}>;"]
    if kind == "psusp":
        return [f"{ts}: Suspended by the user or administrator <{data['by']}>;"]
    if kind == "resume":
        return [f"{ts}: Resumed by the user or administrator <{data['by']}>;"]
    if kind == "requeue":
        return [f"{ts}: Job requeued by user or administrator <{data['by']}>;"]
    if kind == "done":
        return [f"{ts}: Done successfully. The CPU time used is 0.0 seconds;"]
    if kind == "exit":
        if data.get("signal"):
            return [f"{ts}: Exited by signal {data['signal']}. The CPU time used is 0.0 seconds;"]
        if data.get("code") is not None:
            return [f"{ts}: Exited with exit code {data['code']}. The CPU time used is 0.0 seconds;"]
        return [f"{ts}: Exited; The CPU time used is 0.0 seconds;"]
    return []


# ============================================================================ job control

def job_keys_for(state: dict, jid: str) -> list[str]:
    return [k for k in state["jobs"] if k == jid or ("[" not in jid and str(state["jobs"][k]["base"]) == jid)]


# brequeue's filters (OpenLava lsbatch.h): which states a requeue may act on.
REQUEUE_DONE, REQUEUE_EXIT, REQUEUE_RUN = 1, 2, 4
REQUEUE_ALL = REQUEUE_DONE | REQUEUE_EXIT | REQUEUE_RUN
REQUEUE_FLAGS = {"-d": REQUEUE_DONE, "-e": REQUEUE_EXIT, "-r": REQUEUE_RUN}


def cmd_control(c: Cluster, name: str, args: list[str]) -> int:
    sig = None
    ids = []
    # brequeue's filter, as OpenLava's brequeue.c builds it: RUN (running and suspended
    # jobs) unless -d/-e/-r say otherwise; -a is all three. lsb_requeuejob then widens any
    # combination that is not exactly one flag (-d -e, -d -r, ...) to all three.
    requeue = REQUEUE_RUN
    chosen = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-s" and name == "bkill":
            sig = args[i + 1].upper().removeprefix("SIG") if i + 1 < len(args) else None
            i += 2
        elif a in ("-u", "-q", "-J", "-m") and i + 1 < len(args):
            i += 2
        elif name == "brequeue" and a in REQUEUE_FLAGS:
            requeue = (requeue if chosen else 0) | REQUEUE_FLAGS[a]
            chosen = True
            i += 1
        elif name == "brequeue" and a == "-a":
            requeue, chosen = REQUEUE_ALL, True
            i += 1
        elif a.startswith("-") and a not in ("-d", "-e", "-r", "-a", "-H"):
            raise Fail(f"{name}: illegal option -- {a[1:2]}")
        elif a.startswith("-"):
            i += 1
        else:
            ids.append(a)
            i += 1
    if requeue not in (REQUEUE_DONE, REQUEUE_EXIT, REQUEUE_RUN):
        requeue = REQUEUE_ALL
    if not ids:
        raise Fail("Job ID or one of '-m', '-u' '-q' and '-J' must be specified.\n"
                   f"Usage: {name} [-h] [-V] [-u user_name | -u all] [-q queue_name] [-J job_name] "
                   "[jobId | \"jobId[index_list]\"]...")
    for jid in ids:
        if not re.fullmatch(r"\d+(?:\[\d+\])?", jid):
            raise Fail(f"{jid}: Illegal job ID.")
    c.require_daemon("Job <" + ids[0] + ">: Failed in an {lib} library call: LIM is down; try later")
    rc = 0
    colon = " :" if name == "brequeue" else ":"
    out: list[str] = []
    err: list[str] = []
    with c.locked() as state:
        for jid in ids:
            keys = job_keys_for(state, jid)
            if not keys:
                err.append(f"Job <{jid}>{colon} No matching job found")
                rc = 255
                continue
            if not all(c.is_admin() or state["jobs"][k]["user"] == c.me for k in keys):
                err.append(f"Job <{jid}>{colon} User permission denied")
                rc = 255
                continue
            msgs = [control_one(c, state, name, state["jobs"][k], sig, requeue) for k in keys]
            errors = [m for m in msgs if m]
            if errors and len(errors) == len(msgs):
                err.append(f"Job <{jid}>{colon} {errors[0]}")
                rc = 255
                continue
            what = {"bkill": "signaled" if sig else "terminated", "bstop": "stopped",
                    "bresume": "resumed", "brequeue": "requeued "}[name]
            out.append(f"Job <{jid}> is being {what}")
    c.wake()
    for line in out:
        print(line)
    for line in err:
        sys.stderr.write(line + "\n")
    return rc


def control_one(c: Cluster, state: dict, name: str, j: dict, sig: str | None,
                requeue: int = REQUEUE_RUN) -> str | None:
    """Apply one action to one job (element); return an error message or None."""
    now = time.time()
    st = j["status"]
    if name == "bkill":
        if st in FINAL:
            return "Job has already finished"
        if sig and sig not in ("KILL", "9"):
            if st in ("PEND", "PSUSP"):
                return "Job has not started yet"
            j["signals"].append(sig)
            j["events"].append([now, "signal", {"sig": sig, "by": c.me}])
            return None
        j["events"].append([now, "signal", {"sig": "KILL", "by": c.me}])
        j["killed"] = True
        if st in ("PEND", "PSUSP"):
            j["status"] = "EXIT"
            j["end_time"] = now
            j["events"].append([now, "exit", {}])
        else:
            j["signals"].append("KILL")
        return None
    if name == "bstop":
        if st in FINAL:
            return "Job has already finished"
        if st == "PEND":
            j["status"] = "PSUSP"
            j["events"].append([now, "psusp", {"by": c.me}])
        elif st == "RUN":
            j["status"] = "USUSP"
            j["signals"].append("STOP")
            j["events"].append([now, "ususp", {"by": c.me}])
        elif st in ("USUSP", "PSUSP", "SSUSP"):
            return "Job has already been suspended"
        return None
    if name == "bresume":
        if st in FINAL:
            return "Job has already finished"
        if st == "PSUSP":
            j["status"] = "PEND"
            j["events"].append([now, "resume", {"by": c.me}])
        elif st in ("USUSP", "SSUSP"):
            j["status"] = "RUN"
            j["signals"].append("CONT")
            j["events"].append([now, "resume", {"by": c.me}])
        return None          # resuming a job that is not suspended is a no-op, as in LSF
    if name == "brequeue":
        # OpenLava's mbatchd (arrayRequeue, mbd.job.c): a DONE job is requeued only with
        # -d, an EXIT job only with -e, a started one (RUN, USUSP, SSUSP) only with the
        # RUN filter (no option, -r); -a is all of them.
        if (st == "DONE" and requeue & REQUEUE_DONE) or (st == "EXIT" and requeue & REQUEUE_EXIT):
            j["events"].append([now, "requeue", {"by": c.me}])
            reset_to_pending(j)
            return None
        if st in ("RUN", "USUSP", "SSUSP") and requeue & REQUEUE_RUN:
            j["events"].append([now, "requeue", {"by": c.me}])
            j["requeue"] = True
            j["signals"].append("KILL")
            return None
        # Refused: the same checks in the same order, the last that applies wins.
        why = None
        if requeue & REQUEUE_RUN:
            if st in ("PEND", "PSUSP"):
                why = "Job has not started yet"
            if st in FINAL:
                why = "Job has already finished"
        for flag, other in ((REQUEUE_DONE, "EXIT"), (REQUEUE_EXIT, "DONE")):
            if requeue & flag:
                if st in ("PEND", "PSUSP"):
                    why = "Job has not started yet"
                if st == "RUN":
                    why = "Job has already started"
                if st == other:
                    why = "Bad or invalid action specification"     # LSBE_EXCEPT_ACTION
        # (mbatchd checks JOB_STAT_RUN only: a suspended job under -d/-e alone gets no error
        # and no requeue, and brequeue says "is being requeued" all the same.)
        return why
    return "Bad argument"


# ============================================================================ bmod, bswitch

NOT_MODIFIED = ". Job not modified."
RUNNING_MOD = ("Only the following parameters can be used to modify a running job: "
               "-c, -M, -W, -o, -e, -r")
BMOD_USAGE = """Usage: bmod [-h] [-V] [-x | -xn] [-r | -rn] [-N | -Nn] [-B | -Bn]
\t\t[-q queue_name ... | -qn] [-J job_name | -Jn]
\t\t[-W run_limit[/host_spec] | -Wn] [-c cpu_limit[/host_spec] | -cn]
\t\t[-M mem_limit | -Mn] [-o out_file | -on] [-e err_file | -en]
\t\t[jobId | "jobId[index_list]"]"""
BSWITCH_USAGE = ("usage: bswitch [-h] [-V] [-q queue_name] [-u user_name |-u all] [-m host_name]\n"
                 "               [-J job_name] dest_queue [jobId |  \"jobId[idxList]\" ...]")


def cmd_bmod(c: Cluster, args: list[str]) -> int:
    """bmod -J name / -W [hour:]minute / -Wn / -q queue, one job (OpenLava's messages: the
    library's words, then ". Job not modified.", on stderr, exit status 255). A started job
    changes as on LSF 10 with LSB_MOD_ALL_JOBS=Y: its run limit at once, never its name or
    queue."""
    opts: dict = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-J", "-W", "-q"):
            if i + 1 >= len(args):
                raise Fail(f"bmod: option requires an argument -- {a[1:]}\n{BMOD_USAGE}")
            opts[a] = args[i + 1]          # taken whatever it looks like, as getopt does
            i += 2
        elif a in ("-Wn", "-Jn"):
            opts[a] = True
            i += 1
        elif a.startswith("-") and a != "-":
            raise Fail(f"bmod: illegal option -- {a[1:2]}\n{BMOD_USAGE}")
        else:
            break
    ids = args[i:]
    if len(ids) != 1:
        raise Fail(BMOD_USAGE)
    jid = ids[0]
    if not re.fullmatch(r"\d+(?:\[\d+\])?", jid):
        raise Fail(f"{jid}: Illegal job ID.")
    run_limit = None
    if "-W" in opts:
        m = re.fullmatch(r"(?:(\d+):)?(\d+)", opts["-W"])
        if not m:
            raise Fail("Bad argument" + NOT_MODIFIED)
        run_limit = int(m.group(1) or 0) * 60 + int(m.group(2))
        if run_limit < 1:
            raise Fail("Bad argument" + NOT_MODIFIED)
    if "-J" in opts and (opts["-J"] == "" or re.search(r"[\[\]]", opts["-J"])):
        raise Fail("Bad job name" + NOT_MODIFIED)
    c.require_daemon("Failed in an {lib} library call: LIM is down; try later" + NOT_MODIFIED)
    now = time.time()
    with c.locked() as state:
        keys = job_keys_for(state, jid)
        if not keys:
            raise Fail(f"{jid}: No matching job found" + NOT_MODIFIED)
        jobs = [state["jobs"][k] for k in keys]
        if not all(c.is_admin() or j["user"] == c.me for j in jobs):
            raise Fail("User permission denied" + NOT_MODIFIED)
        if all(j["status"] in FINAL for j in jobs):
            raise Fail("Job has already finished" + NOT_MODIFIED)
        array = len(keys) > 1 or "[" in keys[0]
        if array and ("-J" in opts or "-Jn" in opts):
            raise Fail("Change job name is not allowed for job array" + NOT_MODIFIED)
        if array and "-q" in opts:
            sys.stderr.write("Options -q and -O cannot be applied on job array" + NOT_MODIFIED + "\n")
            return 255
        if any(j["status"] in ACTIVE for j in jobs) and ({"-J", "-Jn", "-q"} & set(opts)):
            raise Fail(RUNNING_MOD + NOT_MODIFIED)
        if "-q" in opts:
            if c.queue_conf(opts["-q"]) is None:
                raise Fail(f"{opts['-q']}: No such queue" + NOT_MODIFIED)
            if not state["queues"][opts["-q"]]["open"]:      # acceptJob's order, as bsub's
                raise Fail(f"{opts['-q']}: Queue has been closed" + NOT_MODIFIED)
            if not c.may_use(c.queue_conf(opts["-q"])):
                raise Fail(f"{opts['-q']}: User cannot use the queue" + NOT_MODIFIED)
        for j in jobs:                       # the new limit, or the old one in the new queue
            limit = None if "-Wn" in opts else run_limit if "-W" in opts else j.get("run_limit")
            if j["status"] not in FINAL and over_queue_limit(c.queue_conf(opts.get("-q", j["queue"])) or {}, limit):
                raise Fail("RUNLIMIT: Cannot exceed queue's hard limit(s)" + NOT_MODIFIED)
        for j in jobs:
            if j["status"] in FINAL:
                continue
            if "-J" in opts:
                j["name"] = opts["-J"]
            elif "-Jn" in opts:
                j["name"] = j["command"] if j.get("script") is None else "NONAME"
            if "-W" in opts:
                j["run_limit"] = run_limit
            elif "-Wn" in opts:
                j["run_limit"] = None
            if "-q" in opts and opts["-q"] != j["queue"]:
                j["events"].append([now, "switch", {"from": j["queue"], "to": opts["-q"], "by": c.me}])
                j["queue"] = opts["-q"]
            j["events"].append([now, "modify", {"by": c.me, "name": opts.get("-J"), "run_limit": run_limit}])
    c.wake()
    print(f"Parameters of job <{jid}> are being changed")
    return 0


def cmd_bswitch(c: Cluster, args: list[str]) -> int:
    """bswitch dest_queue jobId...: a waiting job moves; a started one is refused here
    (OpenLava/LSF move it where the queues allow; the gateway moves only waiting jobs)."""
    pos = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-q", "-u", "-J", "-m"):
            i += 2
        elif a in ("-h", "-V") or (a.startswith("-") and a != "-"):
            sys.stderr.write(BSWITCH_USAGE + "\n")
            return 255
        else:
            pos.append(a)
            i += 1
    if not pos:
        print("The destination queue name must be specified.")
        sys.stderr.write(BSWITCH_USAGE + "\n")
        return 255
    dest, ids = pos[0], pos[1:]
    if not ids:
        raise Fail("Job ID or one of '-m', '-u' '-q' and '-J' must be specified.\n" + BSWITCH_USAGE)
    for jid in ids:
        if not re.fullmatch(r"\d+(?:\[\d+\])?", jid):
            raise Fail(f"{jid}: Illegal job ID.")
    c.require_daemon("Job <" + ids[0] + ">: Failed in an {lib} library call: LIM is down; try later")
    rc = 0
    out: list[str] = []
    err: list[str] = []
    now = time.time()
    with c.locked() as state:
        for jid in ids:
            keys = job_keys_for(state, jid)
            if not keys:
                err.append(f"Job <{jid}>: No matching job found")
                rc = 255
                continue
            jobs = [state["jobs"][k] for k in keys]
            if not all(c.is_admin() or j["user"] == c.me for j in jobs):
                err.append(f"Job <{jid}>: User permission denied")
                rc = 255
                continue
            if c.queue_conf(dest) is None:          # OpenLava's order: job, owner, queue, state
                err.append(f"{dest}: No such queue")
                rc = 255
                continue
            if not c.may_use(c.queue_conf(dest)):
                err.append(f"{dest}: User cannot use the queue")
                rc = 255
                continue
            if all(j["status"] in FINAL for j in jobs):
                err.append(f"Job <{jid}>: Job has already finished")
                rc = 255
                continue
            if not state["queues"][dest]["open"]:
                err.append(f"{dest}: Queue has been closed")
                rc = 255
                continue
            if any(j["status"] in ACTIVE for j in jobs):
                err.append(f"Job <{jid}>: Job has already started")
                rc = 255
                continue
            for j in jobs:
                if j["status"] not in FINAL and j["queue"] != dest:
                    j["events"].append([now, "switch", {"from": j["queue"], "to": dest, "by": c.me}])
                    j["queue"] = dest
            out.append(f"Job <{jid}> is switched to queue <{dest}>")
    c.wake()
    for line in out:
        print(line)
    for line in err:
        sys.stderr.write(line + "\n")
    return rc


def reset_to_pending(j: dict) -> None:
    j.update(status="PEND", start_time=None, end_time=None, exit_code=None, signal=None,
             exec_host=None, pid=None, signals=[], killed=False, term=None, requeue=False)


# ============================================================================ bpeek

def cmd_bpeek(c: Cluster, args: list[str]) -> int:
    ids = [a for a in args if not a.startswith("-")]
    c.require_daemon("Failed in an {lib} library call: LIM is down; try later")
    with c.locked(exclusive=False) as state:
        if not ids:
            mine = [k for k, j in state["jobs"].items() if j["user"] == c.me and j["status"] in ACTIVE]
            if not mine:
                raise Fail("No unfinished job found")
            ids = [sorted(mine, key=job_key_sort)[-1]]
        keys = job_keys_for(state, ids[0])
        if not keys:
            raise Fail(f"Job <{ids[0]}> is not found")
        if len(keys) > 1:
            raise Fail("bpeek: Cannot operate on job array")
        j = dict(state["jobs"][keys[0]])
        key = keys[0]
    if j["status"] in ("PEND", "PSUSP"):
        raise Fail(f"Job <{key}> : Not yet started.")
    if j["status"] in FINAL:
        raise Fail(f"Job <{key}> : Already finished.")
    base = os.path.join(c.spool, spool_name(key))
    display_out = j["output"] != "/dev/null"
    display_err = bool(j["error"]) and j["error"] != "/dev/null"
    w = sys.stdout.buffer

    def cat(path):
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError:
            return b""
    # As bpeek does when its stdout is a pipe: the titles go through stdio and are flushed
    # late, so with a separate error file the stdout text comes first.
    if display_out and display_err:
        w.write(cat(base + ".out"))
        w.write(b"<< output from stdout >>\n\n<< output from stderr >>\n")
        w.write(cat(base + ".err"))
    elif display_out:
        w.write(b"<< output from stdout >>\n")
        w.write(cat(base + ".out"))
    elif display_err:
        w.write(b"\n<< output from stderr >>\n")
        w.write(cat(base + ".err"))
    w.flush()
    return 0


# ============================================================================ hosts, queues, users

def host_usage(state: dict, host: str) -> dict:
    u = {"njobs": 0, "run": 0, "ssusp": 0, "ususp": 0}
    for j in state["jobs"].values():
        if j["exec_host"] == host and j["status"] in ACTIVE:
            u["njobs"] += j["processors"]
            u["run" if j["status"] == "RUN" else j["status"].lower()] += j["processors"]
    return u


def host_status(c: Cluster, state: dict, h: dict, wide: bool) -> str:
    if state["hosts"][h["name"]]["closed"]:
        return "closed_Adm" if wide else "closed"
    if host_usage(state, h["name"])["njobs"] >= h["max"]:
        return "closed_Full" if wide else "closed"
    return "ok"


def cmd_bhosts(c: Cluster, args: list[str]) -> int:
    wide = "-w" in args
    names = [a for a in args if not a.startswith("-")]
    c.require_daemon("Failed in an {lib} library call: LIM is down; try later")
    hosts = c.conf["hosts"]
    for n in names:
        if n not in [h["name"] for h in hosts] and n != "all":
            raise Fail(f"{n}: Bad host name, host group name or cluster name")
    gpu = c.style == "c"         # AIP's chosts adds a gpu column
    with c.locked(exclusive=False) as state:
        st_w = 15 if wide else 12
        print(f"{'HOST_NAME':<18} {'STATUS':<{st_w}} {'JL/U':>4} {'MAX':>6} {'NJOBS':>6} {'RUN':>6} "
              f"{'SSUSP':>6} {'USUSP':>6} {'RSV':>6} " + ("  gpu" if gpu else ""))
        for h in hosts:
            if names and h["name"] not in names and "all" not in names:
                continue
            u = host_usage(state, h["name"])
            print(f"{h['name']:<18} {host_status(c, state, h, wide):<{st_w}} {'-':>4} {h['max']:>6} "
                  f"{u['njobs']:>6} {u['run']:>6} {u['ssusp']:>6} {u['ususp']:>6} {0:>6}"
                  + (f"  {h.get('gpus', 0):>3}" if gpu else ""))
    return 0


def cmd_bqueues(c: Cluster, args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    c.require_daemon("Failed in an {lib} library call: LIM is down; try later")
    for n in names:
        if c.queue_conf(n) is None:
            raise Fail(f"{n}: No such queue")
    if "-l" in args:
        with c.locked(exclusive=False) as state:
            for q in sorted(c.conf["queues"], key=lambda q: -q.get("priority", 30)):
                if not names or q["name"] in names:
                    print("\n".join(bqueues_long(c, state, q)))
        return 0
    with c.locked(exclusive=False) as state:
        print("QUEUE_NAME      PRIO STATUS          MAX JL/U JL/P JL/H NJOBS  PEND   RUN  SUSP ")
        for q in sorted(c.conf["queues"], key=lambda q: -q.get("priority", 30)):
            if names and q["name"] not in names:
                continue
            qs = state["queues"][q["name"]]
            status = f"{'Open' if qs['open'] else 'Closed'}:{'Active' if qs['active'] else 'Inact'}"
            cnt = {"PEND": 0, "RUN": 0, "SUSP": 0}
            for j in state["jobs"].values():
                if j["queue"] != q["name"] or j["status"] in FINAL:
                    continue
                key = "PEND" if j["status"] in ("PEND", "PSUSP") else "RUN" if j["status"] == "RUN" else "SUSP"
                cnt[key] += j["processors"]
            mx = q.get("max") or "-"
            print(f"{q['name']:<15} {q.get('priority', 30):>4}   {status:<15} {mx:>3}    -    -    - "
                  f"{sum(cnt.values()):>5} {cnt['PEND']:>5} {cnt['RUN']:>5} {cnt['SUSP']:>5}")
    return 0


def bqueues_long(c: Cluster, state: dict, q: dict) -> list[str]:
    """One queue as OpenLava's ``bqueues -l`` prints it (lsbatch/cmd/bqueues.c): a queue's
    hard run limit (lsb.queues RUNLIMIT; conf "run_limit", minutes) as prtResourceLimit
    prints it, columns of 25 characters, between the statistics and the scheduling
    parameters."""
    qs = state["queues"][q["name"]]
    status = f"{'Open' if qs['open'] else 'Closed'}:{'Active' if qs['active'] else 'Inact'}"
    cnt = {"PEND": 0, "RUN": 0, "SSUSP": 0, "USUSP": 0}
    for j in state["jobs"].values():
        if j["queue"] != q["name"] or j["status"] in FINAL:
            continue
        cnt["PEND" if j["status"] in ("PEND", "PSUSP") else j["status"]] += j["processors"]
    desc = f"  -- {q.get('description', 'No description provided.')}"
    if q.get("default"):
        desc += "  This is the default queue."
    mx = q.get("max") or "-"
    out = ["", f"QUEUE: {q['name']}", desc, "", "PARAMETERS/STATISTICS",
           "PRIO NICE STATUS          MAX JL/U JL/P JL/H NJOBS  PEND   RUN SSUSP USUSP  RSV ",
           f"{q.get('priority', 30):>3}{0:>5}  {status:<16}{mx:>3}    -    -    - {sum(cnt.values()):>5} "
           f"{cnt['PEND']:>5} {cnt['RUN']:>5} {cnt['SSUSP']:>5} {cnt['USUSP']:>5} {0:>4}",
           "Schedule delay for a new job is 0 seconds",
           "Interval for a host to accept two jobs is 0 seconds"]
    if q.get("run_limit"):
        host = c.conf["hosts"][0]["name"]
        out += ["", f" {'RUNLIMIT':<24}", f" {float(q['run_limit']):.1f} min of {host}".ljust(25)[:25]]
    out += ["", "SCHEDULING PARAMETERS",
            "           r15s   r1m  r15m   ut      pg    io   ls    it    tmp    swp    mem",
            " loadSched   -     -     -     -       -     -    -     -     -      -      -  ",
            " loadStop    -     -     -     -       -     -    -     -     -      -      -  ",
            "", f"USERS:  {' '.join(q['users']) if q.get('users') is not None else 'all'}", "HOSTS:  all", ""]
    return out


def over_queue_limit(qconf: dict, run_limit: int | None) -> bool:
    """LSBE_OVER_LIMIT: a run limit above the queue's hard RUNLIMIT (OpenLava's acceptJob
    checks it for everyone, administrators too, at bsub and at bmod)."""
    return bool(run_limit and qconf.get("run_limit") and run_limit > qconf["run_limit"])


def cmd_busers(c: Cluster, args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")] or [c.me]
    c.require_daemon("Failed in an {lib} library call: LIM is down; try later")
    mx = c.conf.get("user_max", 20)
    with c.locked(exclusive=False) as state:
        counts: dict = {}
        for j in state["jobs"].values():
            d = counts.setdefault(j["user"], {"PEND": 0, "RUN": 0, "SSUSP": 0, "USUSP": 0})
            if j["status"] in ("PEND", "PSUSP"):
                d["PEND"] += j["processors"]
            elif j["status"] in ACTIVE:
                d[j["status"]] += j["processors"]
        print("USER/GROUP          JL/P    MAX  NJOBS   PEND    RUN  SSUSP  USUSP    RSV ")
        users = sorted(counts) if "all" in names else names
        for u in users:
            d = counts.get(u, {"PEND": 0, "RUN": 0, "SSUSP": 0, "USUSP": 0})
            print(f"{u:<19} {'-':>4} {mx:>6} {sum(d.values()):>6} {d['PEND']:>6} {d['RUN']:>6} "
                  f"{d['SSUSP']:>6} {d['USUSP']:>6} {0:>6}")
        if "all" in names:
            print(f"{'default':<19} {'-':>4} {mx:>6} {'-':>6} {'-':>6} {'-':>6} {'-':>6} {'-':>6} {'-':>6} ")
    return 0


def cmd_badmin(c: Cluster, args: list[str]) -> int:
    if not args:
        raise Fail("badmin: interactive mode is not supported by the stand-in")
    sub, names = args[0], [a for a in args[1:] if not a.startswith("-")]
    host_ops = {"hopen": "Open", "hclose": "Close"}
    queue_ops = {"qopen": "opened", "qclose": "closed", "qact": "activated", "qinact": "inactivated"}
    if sub not in host_ops and sub not in queue_ops and sub not in ("ckconfig", "reconfig"):
        raise Fail(f"Invalid command <{sub}> \n\nUsage: badmin [-h] [-V] [command] [command_options] "
                   "[command_args]")
    c.require_daemon("Failed in an {lib} library call: LIM is down; try later")
    if sub in ("ckconfig", "reconfig"):
        sys.stderr.write("\nChecking configuration files ...\n\nNo errors found.\n\n")
        return 0
    rc = 0
    with c.locked() as state:
        if sub in host_ops:
            hosts = names or [c.host]
            for h in hosts:
                if h not in state["hosts"]:
                    raise Fail(f"{h}: Bad host name, host group name or cluster name")
            for h in hosts:
                sys.stderr.write(f"{host_ops[sub]} <{h}> ...... ")
                if not c.is_admin():
                    sys.stderr.write("Host control failed: User permission denied\n")
                    rc = 255
                    continue
                state["hosts"][h]["closed"] = sub == "hclose"
                sys.stderr.write("done\n")
        else:
            for q in names or [c.default_queue()]:
                if q not in state["queues"]:
                    sys.stderr.write(f"{q}: No such queue\n")
                    rc = 255
                    continue
                if not c.is_admin():
                    sys.stderr.write(f"Queue <{q}>: User permission denied\n")
                    rc = 255
                    continue
                key = "open" if sub in ("qopen", "qclose") else "active"
                state["queues"][q][key] = sub in ("qopen", "qact")
                print(f"Queue <{q}> is {queue_ops[sub]}")
    c.wake()
    return rc


def cmd_bparams(c: Cluster, args: list[str]) -> int:
    c.require_daemon("Failed in an {lib} library call: LIM is down; try later")
    print(f"Default Queues:  {c.default_queue()}")
    print("Job Dispatch Interval:  1 seconds")
    print("Job Checking Interval:  1 seconds")
    print("Job Accepting Interval:  0 seconds")
    return 0


def cmd_lsid(c: Cluster, args: list[str]) -> int:
    version = c.conf.get("version", "LSF stand-in (test double) 2.2")
    if not c.daemon_pid():
        print("ls_getclustername(): LIM is down; try later")
        print(version)
        print()
        return 255
    print(version)
    print()
    print(f"My cluster name is {c.conf.get('cluster_name', 'lava')}")
    print(f"My master name is {c.host}")
    return 0


# ============================================================================ the daemon

class Daemon:
    """The stand-in's mbatchd + sbatchd: starts pending jobs, delivers signals, reaps."""

    def __init__(self, c: Cluster):
        self.c = c
        self.procs: dict[str, subprocess.Popen] = {}
        self.kill_deadline: dict[str, float] = {}
        self.limit_hit: set[str] = set()
        self.stopping = False

    def run(self) -> None:
        c = self.c
        os.makedirs(c.spool, exist_ok=True)
        os.chmod(c.spool, 0o755)
        sock_path = os.path.join(c.state_dir, "wake.sock")
        try:
            os.unlink(sock_path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        os.chmod(sock_path, 0o777)
        sock.settimeout(0.25)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        with open(os.path.join(c.state_dir, "daemon.pid.tmp"), "w") as fh:
            fh.write(str(os.getpid()))
        os.chmod(os.path.join(c.state_dir, "daemon.pid.tmp"), 0o644)
        os.replace(os.path.join(c.state_dir, "daemon.pid.tmp"), os.path.join(c.state_dir, "daemon.pid"))
        self.adopt_orphans()
        while not self.stopping:
            try:
                self.tick()
            except Exception as exc:  # keep serving; the log says what went wrong
                print(f"daemon: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            try:
                sock.recv(64)
                # drain a burst of wake-ups
                sock.settimeout(0)
                try:
                    while True:
                        sock.recv(64)
                except OSError:
                    pass
                sock.settimeout(0.25)
            except (socket.timeout, BlockingIOError, InterruptedError):
                pass
        try:
            os.unlink(os.path.join(c.state_dir, "daemon.pid"))
        except OSError:
            pass

    def _stop(self, *_):
        self.stopping = True

    def adopt_orphans(self) -> None:
        """Jobs left running by a previous daemon cannot be watched: like LSF after a
        restart of its daemons, they end as EXIT (their processes are killed)."""
        with self.c.locked() as state:
            for k, j in state["jobs"].items():
                if j["status"] in ACTIVE:
                    if j.get("pid"):
                        try:
                            os.killpg(j["pid"], signal.SIGKILL)
                        except OSError:
                            pass
                    self.finish(state, k, j, code=None, sig=None, deliver=False)

    # -- one pass -------------------------------------------------------------------------
    def tick(self) -> None:
        c = self.c
        finished = []
        for key, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is not None:
                finished.append((key, rc))
                del self.procs[key]
        for key, rc in finished:
            self.deliver_output(key, rc)
        with c.locked() as state:
            for key, rc in finished:
                j = state["jobs"].get(key)
                if j is None:
                    continue
                code, sig = (rc, None) if rc >= 0 else (None, -rc)
                if j.get("requeue") and not j.get("killed"):
                    reset_to_pending(j)
                    continue
                self.finish(state, key, j, code=code, sig=sig)
            now = time.time()
            for key, j in state["jobs"].items():
                if key not in self.procs:
                    continue
                pgid = self.procs[key].pid
                for s in j["signals"]:
                    self.signal(pgid, s, key)
                j["signals"] = []
                limit = j.get("run_limit") or (c.queue_conf(j["queue"]) or {}).get("run_limit")
                if limit and j["start_time"] and now > j["start_time"] + limit * 60 \
                        and key not in self.limit_hit:
                    self.limit_hit.add(key)
                    j["term"] = "TERM_RUNLIMIT: job killed after reaching LSF run time limit."
                    self.signal(pgid, "KILL", key)
                dl = self.kill_deadline.get(key)
                if dl and now > dl:
                    self._killpg(pgid, signal.SIGKILL)
                    del self.kill_deadline[key]
            self.schedule(state)
            self.clean(state, now)

    def clean(self, state: dict, now: float) -> None:
        """mbatchd's CLEAN_PERIOD (lsb.params; the cluster's ``clean_period``, seconds, unset:
        never): a job finished that long ago leaves memory. bjobs then says ``Job <N> is not
        found``, bkill/brequeue/bmod ``No matching job found``; bhist still shows it (LSF
        reads it from lsb.events)."""
        period = self.c.conf.get("clean_period")
        if period is None:
            return
        gone = [k for k, j in state["jobs"].items()
                if j["status"] in FINAL and j.get("end_time") and now - j["end_time"] >= period]
        for key in gone:
            state.setdefault("cleaned", {})[key] = state["jobs"].pop(key)

    def signal(self, pgid: int, name: str, key: str) -> None:
        if name == "KILL":
            # like bkill: SIGINT and SIGTERM first, SIGKILL if the job is still there
            self._killpg(pgid, signal.SIGCONT)
            self._killpg(pgid, signal.SIGINT)
            self._killpg(pgid, signal.SIGTERM)
            self.kill_deadline[key] = time.time() + 2.0
            return
        try:
            num = int(name) if name.isdigit() else getattr(signal, "SIG" + name)
        except AttributeError:
            return
        self._killpg(pgid, num)

    @staticmethod
    def _killpg(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass

    def finish(self, state: dict, key: str, j: dict, code, sig, deliver: bool = True) -> None:
        now = time.time()
        j["end_time"] = now
        j["exit_code"] = code
        j["signal"] = sig
        j["status"] = "DONE" if code == 0 and not sig else "EXIT"
        if j["status"] == "DONE":
            j["events"].append([now, "done", {}])
        else:
            j["events"].append([now, "exit", {"code": code, "signal": sig}])
        self.kill_deadline.pop(key, None)

    def schedule(self, state: dict) -> None:
        c = self.c
        free = {}
        for h in c.conf["hosts"]:
            used = host_usage(state, h["name"])["njobs"]
            free[h["name"]] = 0 if state["hosts"][h["name"]]["closed"] else h["max"] - used
        running_by_array: dict = {}
        for j in state["jobs"].values():
            if j["status"] in ACTIVE:
                running_by_array[j["base"]] = running_by_array.get(j["base"], 0) + 1
        for key in sorted(state["jobs"], key=job_key_sort):
            j = state["jobs"][key]
            if j["status"] != "PEND" or key in self.procs:
                continue
            if not state["queues"][j["queue"]]["active"]:
                continue
            if j.get("array_limit") and running_by_array.get(j["base"], 0) >= j["array_limit"]:
                continue
            if dep_satisfied(j.get("dependency"), state) is not True:
                continue
            host = next((h for h, n in free.items() if n >= j["processors"]), None)
            if host is None:
                continue
            if self.start(key, j, host):
                free[host] -= j["processors"]
                running_by_array[j["base"]] = running_by_array.get(j["base"], 0) + 1

    def start(self, key: str, j: dict, host: str) -> bool:
        c = self.c
        now = time.time()
        try:
            pw = pwd.getpwnam(j["user"])
        except KeyError:
            self.finish_unstartable(j, now, 1)
            return False
        base = os.path.join(c.spool, spool_name(key))
        env = dict(j.get("env") or {})
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name,
                   LSB_JOBID=str(j["base"]), LSB_JOBINDEX=str(j.get("index") or 0),
                   LSB_JOBNAME=j["name"], LSB_QUEUE=j["queue"], LSB_HOSTS=host,
                   LSB_MCPU_HOSTS=f"{host} {j['processors']}", LS_SUBCWD=j["cwd"])
        if j.get("script") is not None:
            script_path = base + ".script"
            with open(script_path, "w") as fh:
                fh.write(j["script"])
            os.chmod(script_path, 0o755)
            argv = [script_path] if j["script"].startswith("#!") else ["/bin/sh", script_path]
        else:
            argv = ["/bin/sh", "-c", j["command"]]
        out = open(base + ".out", "wb")
        err = open(base + ".err", "wb") if j["error"] and j["error"] != "/dev/null" else None
        for path in (base + ".out", base + ".err"):
            if os.path.exists(path):
                os.chmod(path, 0o644)
        kwargs = {}
        if os.geteuid() == 0 and pw.pw_uid != 0:
            kwargs = {"user": pw.pw_uid, "group": pw.pw_gid,
                      "extra_groups": os.getgrouplist(pw.pw_name, pw.pw_gid)}
        elif os.geteuid() != pw.pw_uid and os.geteuid() != 0:
            out.close()
            if err:
                err.close()
            self.finish_unstartable(j, now, 1)
            return False
        try:
            proc = subprocess.Popen(argv, cwd=j["cwd"], env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err or subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, **kwargs)
        except OSError as exc:
            out.write(f"{j['cwd']}: {exc.strerror}\n".encode())
            out.close()
            if err:
                err.close()
            self.finish_unstartable(j, now, 1)
            return False
        out.close()
        if err:
            err.close()
        self.procs[key] = proc
        j.update(status="RUN", start_time=now, exec_host=host, pid=proc.pid)
        j["runs"] = j.get("runs", 0) + 1
        j["events"].append([now, "start", {"host": host, "pid": proc.pid}])
        return True

    @staticmethod
    def finish_unstartable(j: dict, now: float, code: int) -> None:
        j.update(status="EXIT", start_time=j.get("start_time") or now, end_time=now, exit_code=code)
        j["events"].append([now, "exit", {"code": code}])

    # -- -o / -e files ---------------------------------------------------------------------
    def deliver_output(self, key: str, rc: int) -> None:
        """Write the job's -o/-e files as its owner (a helper process under its uid)."""
        with self.c.locked(exclusive=False) as state:
            j = state["jobs"].get(key)
            if j is None or (j.get("requeue") and not j.get("killed")):
                return
            user = j["user"]
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            return
        kwargs = {}
        if os.geteuid() == 0 and pw.pw_uid != 0:
            kwargs = {"user": pw.pw_uid, "group": pw.pw_gid,
                      "extra_groups": os.getgrouplist(pw.pw_name, pw.pw_gid)}
        try:
            res = subprocess.run([sys.executable, PROG, "_deliver", key, str(rc)],
                                 env={"LSF_ENVDIR": self.c.envdir, "PATH": "/usr/bin:/bin"},
                                 cwd="/", timeout=30, capture_output=True, **kwargs)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"daemon: delivering output of {key} failed: {exc}", file=sys.stderr, flush=True)
            return
        if res.returncode != 0:
            print(f"daemon: delivering output of {key}: {res.stderr.decode(errors='replace')}",
                  file=sys.stderr, flush=True)


def deliver(c: Cluster, key: str, rc: int) -> int:
    """(runs as the job's owner) the mail-style report + output into the -o file, stderr
    into the -e file — what LSF does when a job ends."""
    with c.locked(exclusive=False) as state:
        j = state["jobs"][key]
    base = os.path.join(c.spool, spool_name(key))

    def read(path):
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError:
            return b""
    out_data = read(base + ".out")
    err_data = read(base + ".err")
    code, sig = (rc, None) if rc >= 0 else (None, -rc)
    ok = code == 0 and not sig
    admin = (c.conf.get("admins") or ["lsfadmin"])[0]
    now = time.time()
    if j["output"] and j["output"] != "/dev/null":
        if ok:
            result = "Successfully completed."
        elif sig:
            result = f"Exited with signal termination: {signal.Signals(sig).name[3:] if sig in signal.valid_signals() else sig}."
        else:
            result = f"Exited with exit code {code}."
        err_path = expand_path(j["error"], j) if j["error"] and j["error"] != "/dev/null" else None
        report = (
            f"Sender: LSF System <{admin}@{c.host}>\n"
            f"Subject: Job {key}: <{j['name']}> {'Done' if ok else 'Exited'}\n\n"
            f"Job <{j['name']}> was submitted from host <{j['from_host']}> by user <{j['user']}>.\n"
            f"Job was executed on host(s) <{j['exec_host']}>, in queue <{j['queue']}>, as user <{j['user']}>.\n"
            f"<{j['home']}> was used as the home directory.\n"
            f"<{j['cwd']}> was used as the working directory.\n"
            f"Started at {fmt_report(j['start_time'] or now)}\n"
            f"Results reported at {fmt_report(now)}\n\n"
            "Your job looked like:\n\n"
            "------------------------------------------------------------\n"
            "# LSBATCH: User input\n"
            f"{j['script'].rstrip(chr(10)) if j.get('script') is not None else j['command']}\n"
            "------------------------------------------------------------\n\n"
            f"{result}\n\n"
            "Resource usage summary:\n\n"
            "    CPU time   :      0.00 sec.\n\n"
            "The output (if any) follows:\n\n").encode()
        tail = f"\n\nPS:\n\nRead file <{err_path}> for stderr output of this job.\n\n".encode() \
            if err_path else b""
        path = expand_path(j["output"], j)
        with open(path, "ab") as fh:
            fh.write(report + out_data + tail)
    if j["error"] and j["error"] != "/dev/null":
        with open(expand_path(j["error"], j), "ab") as fh:
            fh.write(err_data)
    return 0


def cmd_daemon(c: Cluster) -> int:
    Daemon(c).run()
    return 0


# ============================================================================ main

COMMANDS = {
    "bsub": cmd_bsub, "bjobs": cmd_bjobs, "bhist": cmd_bhist, "bpeek": cmd_bpeek,
    "bhosts": cmd_bhosts, "bqueues": cmd_bqueues, "busers": cmd_busers, "badmin": cmd_badmin,
    "bparams": cmd_bparams, "lsid": cmd_lsid, "bmod": cmd_bmod, "bswitch": cmd_bswitch,
}


def main(argv: list[str]) -> int:
    name = os.path.basename(argv[0])
    args = argv[1:]
    if name in ("lsf_standin.py", "lsf_standin") and args:
        name, args = args[0], args[1:]
    style = "c" if name in C_NAMES else "b"
    name = C_NAMES.get(name, name)
    try:
        if name == "_daemon":
            return cmd_daemon(Cluster())
        if name == "_deliver":
            return deliver(Cluster(), args[0], int(args[1]))
        c = Cluster(style)
        if name in ("bkill", "bstop", "bresume", "brequeue"):
            return cmd_control(c, name, args)
        if name in COMMANDS:
            return COMMANDS[name](c, args)
        raise Fail(f"{name}: not a command of the LSF stand-in", rc=127)
    except Fail as f:
        stream = sys.stdout if f.out else sys.stderr
        stream.write(f.msg + ("" if f.msg.endswith("\n") else "\n"))
        return f.rc
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main(sys.argv))
