"""Pure builders of the argument lists the AIP plugin runs. No I/O, no shell.

Two command sets share one option syntax: the LSF-style b-commands (bsub, bjobs, ...) and
SkyForm AIP's c-commands (csub, cjobs, ...). ``CommandSet`` maps the plugin's logical
operations to the configured names; a ``None`` means "this scheduler has no such command"
and the hook answers 501.
"""
from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from gateway.errors import InvalidInput, NotImplementedByPlugin
from gateway.models import JobSpec

# Logical operation -> b-command. The keys of ``commands_override`` are these b-names.
B_COMMANDS = {
    "bsub": "bsub", "bjobs": "bjobs", "bkill": "bkill", "bstop": "bstop",
    "bresume": "bresume", "brequeue": "brequeue", "bhosts": "bhosts", "bqueues": "bqueues",
    "busers": "busers", "bhist": "bhist", "bpeek": "bpeek", "badmin": "badmin",
    "bparams": "bparams", "lsid": "lsid", "bmod": "bmod",
}
# SkyForm AIP's own names. What AIP has no c-name for is absent (None) unless overridden.
# Changing a job (bmod) has no c-name either: the c-set runs the LSF-compatible name an
# AIP head node also installs (commands_override.bmod: another name, or null for 501).
C_COMMANDS = {
    "bsub": "csub", "bjobs": "cjobs", "bkill": "ckill", "bstop": "cstop",
    "bresume": "cresume", "brequeue": None, "bhosts": "chosts", "bqueues": "cqueues",
    "busers": None, "bhist": "chist", "bpeek": "cread", "badmin": None,
    "bparams": None, "lsid": None, "bmod": "bmod",
}

# Fields requested from ``bjobs -o ... -json`` by default: the ones OpenLava-derived
# schedulers know (LSF 10.1 knows many more; add e.g. exit_code through the options).
DEFAULT_JSON_FIELDS = ("jobid", "user", "stat", "queue", "from_host", "exec_host", "job_name",
                       "submit_time", "start_time", "finish_time", "proj_name")

# bsub options a client may pass in nativeOptions: option -> number of values it takes.
DEFAULT_NATIVE_ALLOW: dict[str, int] = {
    "-P": 1, "-R": 1, "-m": 1, "-G": 1, "-sp": 1, "-x": 0, "-r": 0, "-rn": 0, "-N": 0,
    "-B": 0, "-b": 1, "-t": 1, "-c": 1, "-F": 1, "-D": 1, "-S": 1, "-v": 1, "-T": 1,
    "-app": 1, "-gpu": 1, "-U": 1, "-g": 1, "-sla": 1, "-Jd": 1, "-ul": 0, "-We": 1,
    "-u": 1, "-L": 1, "-i": 1, "-C": 1, "-p": 1,
}
# Options the plugin sets from JobSpec fields: naming them in nativeOptions is refused
# with a pointer to the field.
RESERVED_OPTIONS = {
    "-J": "name (and array)", "-q": "queue", "-n": "cpus", "-o": "stdout", "-oo": "stdout",
    "-e": "stderr", "-eo": "stderr", "-W": "timeLimitMinutes", "-M": "memoryMB",
    "-w": "dependency", "-H": "hold", "-cwd": "workDir", "-env": "environment",
}

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Variables a client may not set: they steer the commands the gateway runs (loader,
# search path, scheduler configuration, shell start-up), not just the job.
ENV_DENIED = re.compile(r"^(?:PATH|LD_\w*|LSF_\w*|LSB_\w*|EGO_\w*|BASH_ENV|ENV|BASH_FUNC_\w*|"
                        r"IFS|SHELLOPTS|BASHOPTS|PS4|HOME|USER|LOGNAME|SHELL|PYTHON\w*|"
                        r"PERL5?\w*|GCONV_PATH|LOCALDOMAIN|HOSTALIASES|RES_OPTIONS|TMPDIR|NLSPATH)$")

ARRAY_RE = re.compile(r"^\d+(?:-\d+(?::\d+)?)?(?:,\d+(?:-\d+(?::\d+)?)?)*(?:%\d+)?\Z")
JOB_ID_ARG = re.compile(r"^\d{1,15}(?:\[\d{1,9}\])?\Z")
NAME_ARG = re.compile(r"^[A-Za-z0-9_.@+][A-Za-z0-9_.@+:-]{0,127}\Z")   # hosts and queues


@dataclass(frozen=True)
class CommandSet:
    """Resolves logical names (the b-names) to what this scheduler calls them."""
    style: str = "b"
    overrides: Mapping[str, str | None] = field(default_factory=dict)
    bindir: str | None = None

    def get(self, name: str) -> str | None:
        base = (B_COMMANDS if self.style == "b" else C_COMMANDS)
        if name not in B_COMMANDS:
            raise KeyError(name)
        cmd = self.overrides[name] if name in self.overrides else base.get(name)
        if not cmd:
            return None
        if self.bindir and not cmd.startswith("/"):
            return posixpath.join(self.bindir, cmd)
        return cmd

    def need(self, name: str, what: str) -> str:
        cmd = self.get(name)
        if cmd is None:
            raise NotImplementedByPlugin(
                f"{what} is not available: this scheduler's command set ({self.style}-commands) "
                f"has no equivalent of {name} (set commands_override.{name} if it has one)")
        return cmd

    def has(self, name: str) -> bool:
        return self.get(name) is not None


# --------------------------------------------------------------------------- environment

def check_env(env: Mapping[str, str], field_name: str = "environment") -> dict[str, str]:
    """Validate client-supplied variables for the job (and thus for bsub's own process)."""
    out: dict[str, str] = {}
    for k, v in (env or {}).items():
        k, v = str(k), str(v)
        if not ENV_NAME.match(k):
            raise InvalidInput(f"{field_name}: {k!r} is not a valid variable name",
                               errors={field_name: [f"invalid variable name {k!r}"]})
        if ENV_DENIED.match(k):
            raise InvalidInput(f"{field_name}: {k} cannot be set through the gateway",
                               errors={field_name: [f"{k} is reserved"]})
        if "\x00" in v:
            raise InvalidInput(f"{field_name}: the value of {k} contains a NUL character",
                               errors={field_name: [f"NUL in {k}"]})
        out[k] = v
    return out


def env_prefix(env: Mapping[str, str] | None, chdir: str | None = None) -> list[str]:
    """``env [-C DIR] NAME=VALUE ...`` — sets variables and the working directory of the
    command that follows without a shell (and survives ``sudo``'s environment reset)."""
    if not env and not chdir:
        return []
    argv = ["env"]
    if chdir:
        argv += ["-C", chdir]
    for k, v in (env or {}).items():
        if not ENV_NAME.match(k):
            raise ValueError(f"bad variable name {k!r}")
        argv.append(f"{k}={v}")
    return argv


# --------------------------------------------------------------------------- submission

def _no_nul(value: str | None, field_name: str) -> str | None:
    if value is not None and "\x00" in value:
        raise InvalidInput(f"{field_name} contains a NUL character",
                           errors={field_name: ["NUL character"]})
    return value


def check_native_options(opts: Sequence[str], allow: Mapping[str, int]) -> list[str]:
    """nativeOptions against the allow-list: every option known, with its values."""
    out: list[str] = []
    i = 0
    opts = [str(o) for o in (opts or [])]
    while i < len(opts):
        opt = opts[i]
        _no_nul(opt, "nativeOptions")
        if opt in RESERVED_OPTIONS:
            raise InvalidInput(
                f"nativeOptions: {opt} is set through the job's {RESERVED_OPTIONS[opt]} field",
                errors={"nativeOptions": [f"{opt} is not allowed here"]})
        if opt not in allow:
            raise InvalidInput(f"nativeOptions: {opt} is not an allowed bsub option",
                               errors={"nativeOptions": [f"{opt} is not allowed"]})
        n = int(allow[opt])
        vals = opts[i + 1:i + 1 + n]
        if len(vals) < n:
            raise InvalidInput(f"nativeOptions: {opt} needs {n} value(s)",
                               errors={"nativeOptions": [f"{opt} needs a value"]})
        out.append(opt)
        out.extend(vals)
        i += 1 + n
    return out


_SLURM_DEP = re.compile(r"^(after|afterok|afterany|afternotok|afterburstbuffer|aftercorr)"
                        r"((?::\d+(?:_\d+)?)+)$")
_LSF_DEP_FUNCS = {"after": "started", "afterok": "done", "afterany": "ended",
                  "afternotok": "exit", "aftercorr": "done", "afterburstbuffer": "ended"}


def dependency_expr(dep: str) -> str:
    """A dependency as an LSF ``-w`` expression. Slurm's ``afterok:12:13,afterany:14``
    (``?`` for "any of") is translated to ``done(12) && done(13) && ended(14)``; anything
    else is taken as an LSF expression (``done(12) || exit(13)``) and passed as it is."""
    dep = (dep or "").strip()
    _no_nul(dep, "dependency")
    if not dep:
        raise InvalidInput("dependency is empty", errors={"dependency": ["empty"]})
    sep = "?" if "?" in dep else ","
    parts = dep.split(sep)
    if all(_SLURM_DEP.match(p.strip()) for p in parts):
        terms = []
        for p in parts:
            m = _SLURM_DEP.match(p.strip())
            func = _LSF_DEP_FUNCS[m.group(1)]
            for jid in m.group(2).strip(":").split(":"):
                jid = jid.replace("_", "[") + "]" if "_" in jid else jid
                terms.append(f"{func}({jid})")
        return (" || " if sep == "?" else " && ").join(terms)
    if re.match(r"^(after\w*):", dep):
        raise InvalidInput(f"dependency {dep!r} is not understood",
                           errors={"dependency": ["use afterok:ID[:ID...] or an LSF expression"]})
    return dep


def check_job_name(name: str) -> str:
    """A job name for ``-J`` (bsub and bmod), or InvalidInput with a field error."""
    _no_nul(name, "name")
    if name == "" or "[" in name or "]" in name:
        raise InvalidInput("name must be non-empty and may not contain [ or ] "
                           "(use the array field for job arrays)",
                           errors={"name": ["[ and ] are reserved for arrays"]})
    if "<" in name or ">" in name:
        # bjobs -l prints fields as "Key <value>": a name with them could pose as another field.
        raise InvalidInput("name may not contain < or >", errors={"name": ["may not contain < or >"]})
    return name


@dataclass
class Submission:
    """What to run for a submission: bsub's options + command words, its stdin, and the
    variables and working directory to give bsub (bsub copies them into the job)."""
    args: list[str]
    stdin: bytes | None
    env: dict[str, str]
    chdir: str | None


def submit_args(spec: JobSpec, *, native_allow: Mapping[str, int] = DEFAULT_NATIVE_ALLOW,
                memory_unit: str = "KB", cwd_flag: bool = False,
                default_stdout: str | None = "lsf-%J.out",
                default_stderr: str | None = "lsf-%J.err",
                project: str | None = None, script_text: str | None = None) -> Submission:
    """Map every JobSpec field to bsub options.

    ``script_text`` is the script body to send on stdin (the spec's ``script``, or what the
    caller read from ``scriptLocation``); ``spec.command`` becomes bsub's command words.
    """
    args: list[str] = []
    for fname in ("name", "queue", "work_dir", "stdout", "stderr", "command", "array"):
        _no_nul(getattr(spec, fname), fname)

    name = spec.name
    if name is not None:
        check_job_name(name)
    if spec.array:
        arr = spec.array.strip()
        if not ARRAY_RE.match(arr):
            raise InvalidInput(f"array {spec.array!r} is not of the form 1-100 or 1-100%10",
                               errors={"array": ["expected e.g. 1-100%10"]})
        rng, _, limit = arr.partition("%")
        args += ["-J", f"{name or 'array'}[{rng}]" + (f"%{limit}" if limit else "")]
    elif name is not None:
        args += ["-J", name]

    if spec.queue:
        args += ["-q", spec.queue]

    slots = spec.cpus
    if slots is None and spec.cpus_per_task:
        slots = spec.cpus_per_task * (spec.nodes or 1)
    if slots is None and spec.nodes and spec.nodes > 1:
        slots = spec.nodes
    if slots is not None:
        args += ["-n", str(int(slots))]
    if spec.nodes:
        if spec.nodes == 1:
            args += ["-R", "span[hosts=1]"]
        else:
            if not slots or slots % spec.nodes:
                raise InvalidInput("cpus must be a multiple of nodes",
                                   errors={"cpus": ["must be a multiple of nodes"]})
            args += ["-R", f"span[ptile={slots // spec.nodes}]"]

    if spec.memory_mb is not None:
        unit = memory_unit.upper()
        value = {"KB": spec.memory_mb * 1024, "MB": spec.memory_mb,
                 "GB": math.ceil(spec.memory_mb / 1024)}[unit]
        args += ["-M", str(int(value))]
    if spec.time_limit_minutes is not None:
        args += ["-W", str(int(spec.time_limit_minutes))]

    chdir = None
    if spec.work_dir:
        if cwd_flag:
            args += ["-cwd", spec.work_dir]
        else:
            chdir = spec.work_dir

    out = spec.stdout or default_stdout
    # stdout given without stderr: LSF writes both to the -o file (as the mock backend does)
    err = spec.stderr or (None if spec.stdout else default_stderr)
    if spec.array:
        # one file per element unless the client chose otherwise
        out = out if spec.stdout or not out else out.replace("%J", "%J_%I")
        err = err if spec.stderr or not err else err.replace("%J", "%J_%I")
    if out:
        args += ["-o", out]
    if err:
        args += ["-e", err]

    if spec.dependency:
        args += ["-w", dependency_expr(spec.dependency)]
    if spec.hold:
        args += ["-H"]
    if project:
        args += ["-P", project]

    args += check_native_options(spec.native_options, native_allow)

    env = check_env(spec.environment)

    stdin = None
    if spec.command is not None:
        cmd = spec.command
        if not cmd.strip():
            raise InvalidInput("command is empty", errors={"command": ["empty"]})
        if cmd.lstrip().startswith("-"):
            raise InvalidInput("command may not start with '-' (bsub would read it as an option)",
                               errors={"command": ["starts with -"]})
        args.append(cmd)
    else:
        text = script_text if script_text is not None else spec.script
        if text is None:
            raise InvalidInput("one of script, command or scriptLocation is required")
        if "\x00" in text:
            raise InvalidInput("script contains a NUL character", errors={"script": ["NUL"]})
        if not text.endswith("\n"):
            text += "\n"
        stdin = text.encode("utf-8")
    return Submission(args=args, stdin=stdin, env=env, chdir=chdir)


# --------------------------------------------------------------------------- output files

# A finished job's output file, without reading all of it. First line: its size and, for a
# file larger than two windows that starts with LSF's report and whose size is not ``known``
# (the size at the plugin's last scan of it), the byte offset of the last report ("Sender:
# LSF System <" at a line start: -o appends, so a reused or requeued job's file holds every
# run's) and of its "The output (if any) follows:" line from there ("-" when none). The scan
# runs on the cluster, bounded (10 s, 256 MiB of memory: grep holds a line, and a binary
# output may have none); when it fails the plugin falls back to the windows. Then the whole
# file when it is at most two windows, else its first window and the window ending at the
# size just measured (a file still growing does not shift it). The arguments are positional
# parameters, never part of the script. `env` first: docs/aip.md's sudoers lets the gateway
# run env.
_OUTPUT_WINDOWS = (
    'f=$1; w=$2; k=$3; s=$(wc -c < "$f") || exit 1; r=-; o=-; '
    'if [ "$s" != "$k" ] && [ "$k" != no ] && [ "$s" -gt $((2 * w)) ] '
    '&& [ "$(head -c 20 < "$f")" = "Sender: LSF System <" ]; then '
    'r=$( (ulimit -v 262144; LC_ALL=C timeout 10 grep -a -b "^Sender: LSF System <" < "$f") '
    '| tail -n 1 | cut -d: -f1); '
    'if [ -n "$r" ]; then o=$( (ulimit -v 262144; tail -c +$((r + 1)) < "$f" '
    '| LC_ALL=C timeout 10 grep -a -b -m 1 -x "The output (if any) follows:") | cut -d: -f1); fi; '
    'r=${r:--}; o=${o:--}; fi; '
    'echo "$s $r $o"; '
    'if [ "$s" -le $((2 * w)) ]; then head -c "$s" < "$f"; '
    'else head -c "$w" < "$f"; tail -c +$((s - w + 1)) < "$f" | head -c "$w"; fi')


def output_windows(path: str, window: int, known_size: int | None = None, scan: bool = True) -> list[str]:
    """``known_size``: the size at the last scan (no new scan while it is the same);
    ``scan``: False for a file without reports to look for (stderr)."""
    known = "no" if not scan else ("-" if known_size is None else str(int(known_size)))
    return ["env", "sh", "-c", _OUTPUT_WINDOWS, "sh", path, str(int(window)), known]


def read_range(path: str, offset: int, count: int) -> list[str]:
    """``count`` bytes of ``path`` from ``offset`` (dd: no shell, no pipeline)."""
    return ["env", "dd", f"if={path}", "bs=65536", "iflag=skip_bytes,count_bytes",
            f"skip={int(offset)}", f"count={int(count)}", "status=none"]


# --------------------------------------------------------------------------- queries

def job_id_arg(job_id: str) -> str:
    """A job id as a command argument, or InvalidInput (the hooks turn it into 404)."""
    if not JOB_ID_ARG.match(str(job_id)):
        raise InvalidInput(f"malformed job id {job_id!r}")
    return str(job_id)


def bjobs_json_args(fields: Sequence[str], user: str | None, ids: Sequence[str] = ()) -> list[str]:
    return ["-a", "-u", user or "all", "-o", " ".join(fields), "-json", *ids]


def bjobs_wide_args(user: str | None, ids: Sequence[str] = ()) -> list[str]:
    return ["-a", "-w", "-u", user or "all", *ids]


def bjobs_long_args(ids: Sequence[str]) -> list[str]:
    return ["-l", "-a", "-u", "all", *ids]


def bhist_long_args(ids: Sequence[str]) -> list[str]:
    return ["-l", "-u", "all", *ids]


ACTION_COMMANDS = {
    # action -> (command, extra args); hold/release are bstop/bresume of a pending job.
    "kill": ("bkill", []), "suspend": ("bstop", []), "resume": ("bresume", []),
    "requeue": ("brequeue", []), "hold": ("bstop", []), "release": ("bresume", []),
}

# brequeue's filter by the native state the job was last seen in. With no option LSF's and
# OpenLava's brequeue requeue only started jobs (RUN, USUSP, SSUSP) and refuse a finished one
# ("Job <N> : Job has already finished"): -d requeues a DONE job, -e an EXIT job. PDONE and
# PERR are LSF's post-execution states of a finished job (PERR's job may have been either).
_REQUEUE_FILTERS = {"DONE": ("-d",), "PDONE": ("-d",), "EXIT": ("-e",), "PERR": ("-d", "-e")}


def requeue_args(native_states: Sequence[str]) -> list[str]:
    """brequeue's options for a job seen in ``native_states`` (one, or an array's elements).

    The filter matches the state the gateway has just read, never ``-a``: the scheduler
    then acts only if the job is still in that state. A job seen DONE that someone else has
    requeued and that runs again meanwhile is refused (``Job has already started``: 409)
    instead of having its new run killed and requeued once more; a job seen running that
    has ended meanwhile is refused (``Job has already finished``: 409) instead of being
    started again, a thing the client did not ask of a job it believed running. Either way
    the client looks again and decides; with -a the command would act on whatever the job
    had become. A job still active (an array with an element running or suspended) gets no
    option: its started elements are requeued, its finished ones stay, as LSF does. An
    array whose elements have all ended, some DONE and some EXIT, needs ``-d -e`` (OpenLava's
    lsb_requeuejob widens two filters to all three: a race there is an array's, not a job's).
    """
    opts: list[str] = []
    for native in native_states:
        filt = _REQUEUE_FILTERS.get((native or "").strip().upper())
        if filt is None:                      # active (or unknown): the default RUN filter
            return []
        opts += [o for o in filt if o not in opts]
    return sorted(opts)


HOST_ACTIONS = {"open": "hopen", "close": "hclose"}
QUEUE_ACTIONS = {"open": "qopen", "close": "qclose", "activate": "qact", "inactivate": "qinact"}


def name_arg(value: str, what: str) -> str:
    """A host or queue name as an argument: plain names only (404 otherwise)."""
    if not NAME_ARG.match(value or ""):
        raise InvalidInput(f"malformed {what} name {value!r}")
    return value


# --------------------------------------------------------------------------- changing a job

def queue_arg(queue: str) -> str:
    """A queue a client names (to move a job to): a plain name, or InvalidInput (422)."""
    try:
        return name_arg(queue, "queue")
    except InvalidInput as exc:
        raise InvalidInput(exc.msg, errors={"queue": ["not a valid queue name"]}) from None


def check_time_limit(minutes: int) -> int:
    """A run limit in whole minutes (at least 1), or InvalidInput with a field error."""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
        raise InvalidInput("timeLimitMinutes must be a whole number of minutes, at least 1",
                           errors={"timeLimitMinutes": ["must be an integer of at least 1"]})
    return minutes


def bmod_args(job_id: str, *, queue: str | None = None, name: str | None = None,
              time_limit_minutes: int | None = None) -> list[str]:
    """``bmod [-q queue] [-J name] [-W minutes] <id>``: a new queue, name and run limit in
    one call, which LSF applies all or none of; [] when none is given. One command, not
    bswitch then bmod: two can leave half a change made, and undoing the first after the
    second failed is wrong when that one timed out (it may have acted). LSF reads -W as
    [hour:]minute: plain minutes are sent."""
    args: list[str] = []
    if queue is not None:
        args += ["-q", queue_arg(queue)]
    if name is not None:
        args += ["-J", check_job_name(name)]
    if time_limit_minutes is not None:
        args += ["-W", str(check_time_limit(time_limit_minutes))]
    if not args:
        return []
    return args + [job_id_arg(job_id)]
