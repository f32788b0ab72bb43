"""Slurm command lines as argument lists: pure functions, no I/O.

Nothing here ever goes through a shell on our side: the transports carry these lists as they
are (the SSH and SSM transports quote every element for the remote shell). Everything a
client sends is checked in :func:`sbatch` before it becomes one whole argument
(``--job-name=<name>``), so no value can turn into an option or a second argument.
"""
from __future__ import annotations

import re
from typing import Iterable

from gateway.errors import Forbidden, InvalidInput
from gateway.models import JobChange, JobSpec

# squeue -O fields for releases without --json (before 21.08). Each ends with a unit
# separator (0x1f) and the record with a record separator (0x1e): job names, work dirs and
# commands may hold '|', spaces and even newlines. ":0" = no truncation.
FIELD_SEP = "\x1f"
RECORD_SEP = "\x1e"
FORMAT_FIELDS = ("JobArrayID", "JobID", "ArrayJobID", "ArrayTaskID", "Name", "UserName", "State",
                 "Reason", "Partition", "SubmitTime", "StartTime", "EndTime", "NumNodes", "NumCPUs",
                 "MinMemory", "tres-alloc", "TimeLimit", "WorkDir", "STDOUT", "STDERR", "Command", "NodeList")
# run_as: service reads each job's comment too: the gateway user it was submitted for.
SERVICE_FORMAT_FIELDS = FORMAT_FIELDS + ("Comment",)

# Under run_as: service every job is the service account's in Slurm: sbatch tags it with the
# gateway user it runs for (--comment=hpc-gateway:alice), and a job of the service account
# with that tag is alice's. Only the service account's jobs are read that way: anyone on the
# cluster can put any comment on their own jobs.
OWNER_TAG = "hpc-gateway:"
OWNER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}\Z")

# sbatch options a client may pass in nativeOptions (plus the plugin's allowed_native_options).
# Left out on purpose: options the JobSpec has fields for, options that read files on the
# submit host or change who/what runs (--export*, --uid, --gid, --get-user-env, --wrap,
# --container, --bbf, --input), and options that change sbatch's own output or behaviour
# (--parsable, --test-only, --wait, --clusters, --quiet, --verbose, --help, --version).
DEFAULT_NATIVE_OPTIONS = frozenset("""
--account --acctg-freq --begin --comment --constraint --contiguous --core-spec --cores-per-socket
--cpu-freq --deadline --delay-boot --distribution --exclude --exclusive --extra-node-info --gpu-bind
--gpu-freq --gpus --gpus-per-node --gpus-per-socket --gpus-per-task --gres --gres-flags --hint
--ignore-pbs --kill-on-invalid-dep --licenses --mail-type --mail-user --mcs-label --mem-bind
--mem-per-cpu --mem-per-gpu --mincpus --network --nice --no-kill --no-requeue --nodelist
--ntasks-per-core --ntasks-per-gpu --ntasks-per-node --ntasks-per-socket --open-mode --overcommit
--oversubscribe --prefer --profile --propagate --qos --requeue
--reservation --signal --sockets-per-node --spread-job --switches --thread-spec --threads-per-core
--time-min --tmp --use-min-nodes --wckey
""".split())

# The options sbatch (22.05) accepts without a value: none, or an optional one that getopt
# only takes after '='. Measured on Debian's sbatch: `sbatch --NAME --usage </dev/null` prints
# the usage for exactly these; every other option took "--usage" as its value. Every other
# option, on the default allow-list or an operator's, must come as --name=value: given bare,
# sbatch would take the *next* argument as its value (--mail-user swallowing the gateway's
# --wrap=..., --account the next native option, an operator's --container the "--" before
# the script's path).
NATIVE_FLAGS = frozenset("""
--contiguous --exclusive --get-user-env --hold --ignore-pbs --nice --no-kill --no-requeue
--overcommit --oversubscribe --parsable --propagate --quiet --reboot --requeue --spread-job
--test-only --use-min-nodes --verbose --wait
""".split())

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
NATIVE_OPTION = re.compile(r"(--[a-z][a-z0-9-]*)(=.*)?\Z", re.S)
# A job id as Slurm prints it: 123, 123_4 (array task), 123_[4-9%2] (pending tasks).
JOB_ID = re.compile(r"[1-9][0-9]{0,17}(_([0-9]{1,9}|\[[0-9,%:-]{1,200}\]))?\Z")
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
PARTITION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}\Z")


def valid_job_id(job_id: str) -> bool:
    return isinstance(job_id, str) and bool(JOB_ID.match(job_id))


# ---------------------------------------------------------------- reading the queue

def squeue_json() -> list[str]:
    """All jobs of all users and partitions, in every state: one REQUEST_JOB_INFO RPC."""
    return ["squeue", "--json", "--all", "--states=all"]


def squeue_format(fields: tuple[str, ...] = FORMAT_FIELDS) -> list[str]:
    """The same as :func:`squeue_json` for releases without --json; times as epoch seconds.
    ``fields``: FORMAT_FIELDS, or SERVICE_FORMAT_FIELDS (with each job's comment)."""
    fmt = ",".join(f"{name}:0{FIELD_SEP}" for name in fields[:-1])
    fmt += f",{fields[-1]}:0{RECORD_SEP}"
    return ["env", "SLURM_TIME_FORMAT=%s", "squeue", "--noheader", "--all", "--states=all",
            f"--Format={fmt}"]


def show_job(job_id: str) -> list[str]:
    """One job's full record (the format path uses it once per finished job for ExitCode)."""
    return ["env", "SLURM_TIME_FORMAT=%s", "scontrol", "--oneliner", "show", "job", job_id]


def version() -> list[str]:
    return ["squeue", "--version"]


def sinfo_json() -> list[str]:
    return ["sinfo", "--json"]


def show_nodes() -> list[str]:
    return ["scontrol", "--oneliner", "show", "node"]


def show_partitions() -> list[str]:
    return ["scontrol", "--all", "--oneliner", "show", "partition"]


def show_config() -> list[str]:
    return ["scontrol", "show", "config"]


def ping() -> list[str]:
    return ["scontrol", "ping"]


def getent_passwd(user: str) -> list[str]:
    return ["getent", "passwd", "--", user]


# ---------------------------------------------------------------- changing jobs

def scancel(job_id: str) -> list[str]:
    # --verbose: without it scancel says nothing (and exits 0) for an unknown or finished job.
    return ["scancel", "--verbose", job_id]


def job_action(action: str, job_id: str) -> list[str]:
    """scontrol suspend|resume|requeue|hold|release <id>."""
    if action not in ("suspend", "resume", "requeue", "hold", "release"):
        raise ValueError(action)
    return ["scontrol", action, job_id]


def update_job(job_id: str, change: JobChange) -> list[str]:
    """scontrol update JobId=<id> [JobName=...] [Partition=...] [TimeLimit=<minutes>]: one
    RPC, which Slurm applies whole or not at all. Each key=value is one argument: scontrol
    splits it at its first '=' only, so a name with spaces, '=' or ';' stays the name."""
    if not valid_job_id(job_id):
        raise ValueError(job_id)
    argv = ["scontrol", "update", f"JobId={job_id}"]
    if change.name is not None:
        if "\0" in change.name:
            raise InvalidInput("the name must not contain NUL characters", errors={"name": ["NUL character"]})
        argv.append(f"JobName={change.name}")
    if change.queue is not None:
        if not PARTITION_NAME.match(change.queue):
            raise InvalidInput(f"{change.queue!r} is not a Slurm partition name", errors={"queue": ["not a partition name"]})
        argv.append(f"Partition={change.queue}")
    if change.time_limit_minutes is not None:
        argv.append(f"TimeLimit={int(change.time_limit_minutes)}")
    return argv


# Slurm lets operators only suspend and resume; the gateway lets a job's owner do both, but
# must not let them resume a job an administrator (or Slurm's preemption) suspended. So an
# owner's suspension is recorded in the job's AdminComment, which only Slurm administrators
# (AdminLevel=Administrator, SlurmUser, root) can set,
# bound to that suspension's time: "hpc-gateway:user-suspend@<epoch>[ <the comment before>]".
USER_SUSPEND_MARK = "hpc-gateway:user-suspend@"


def user_suspend_mark(suspend_time, before: str) -> str:
    """The AdminComment of an owner's suspension (read back by parse.user_suspension)."""
    return f"{USER_SUSPEND_MARK}{suspend_time}" + (f" {before}" if before else "")


def set_admin_comment(job_id: str, text: str) -> list[str]:
    return ["scontrol", "update", f"JobId={job_id}", f"AdminComment={text}"]


def update_node(node: str, action: str, reason: str | None = None) -> list[str]:
    if action == "open":
        return ["scontrol", "update", f"nodename={node}", "state=resume"]
    if action == "close":
        return ["scontrol", "update", f"nodename={node}", "state=drain", f"reason={reason or 'closed'}"]
    raise ValueError(action)


def update_partition(partition: str, state: str) -> list[str]:
    if state not in ("UP", "DOWN", "DRAIN", "INACTIVE"):
        raise ValueError(state)
    return ["scontrol", "update", f"partitionname={partition}", f"state={state}"]


# ---------------------------------------------------------------- files on the cluster

def stat_size(path: str) -> list[str]:
    return ["stat", "--dereference", "--format=%s", "--", path]


def read_bytes(path: str, offset: int, limit: int) -> list[str]:
    """``limit`` bytes of ``path`` from ``offset``: dd, so no shell pipeline is needed."""
    return ["dd", f"if={path}", "bs=65536", "iflag=skip_bytes,count_bytes",
            f"skip={int(offset)}", f"count={int(limit)}", "status=none"]


def make_temp_file() -> list[str]:
    """A new 0600 file in the cluster's TMPDIR (for sbatch --export-file)."""
    return ["mktemp", "--tmpdir", "hpc-gateway-env.XXXXXXXXXX"]


def write_file(path: str) -> list[str]:
    """Overwrite ``path`` with stdin."""
    return ["dd", f"of={path}", "bs=65536", "status=none"]


def remove_file(path: str) -> list[str]:
    return ["rm", "-f", "--", path]


# ---------------------------------------------------------------- submission

# Options whose value sbatch reads as a file on the submit host when it holds a '/'.
READS_FILE_WITH_SLASH = frozenset({"--nodelist", "--exclude"})


def _no_nul(field: str, value: str | None, errors: dict) -> None:
    if value is not None and "\x00" in value:
        errors.setdefault(field, []).append("must not contain NUL characters")


def check_native_options(options: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """Return the options as sbatch arguments, or raise InvalidInput naming every bad one.

    Each element must be a whole long option, ``--name`` or ``--name=value``, whose name is
    on the allow-list: a value never travels as a separate element, where it could be taken
    for an option or for the script's path. getopt's abbreviations (``--wra``) are refused
    because only exact names are on the list.
    """
    allowed = set(allowed)
    bad, messages, out = [], [], []
    for opt in options:
        if not isinstance(opt, str) or "\x00" in opt:
            bad.append(repr(opt))
            messages.append(f"{opt!r}: must be a string without NUL characters")
            continue
        m = NATIVE_OPTION.match(opt)
        if not m:
            bad.append(opt)
            messages.append(f"{opt!r}: give each option as one element, --name or --name=value")
            continue
        if m.group(1) not in allowed:
            bad.append(m.group(1))
            messages.append(f"{m.group(1)}: not an allowed sbatch option")
            continue
        if m.group(2) is None and m.group(1) not in NATIVE_FLAGS:
            bad.append(opt)
            messages.append(f"{opt}: takes a value, give it as {opt}=VALUE")
            continue
        if m.group(1) in READS_FILE_WITH_SLASH and "/" in (m.group(2) or ""):
            bad.append(opt)
            messages.append(f"{m.group(1)}: give host names; sbatch reads a value with '/' as a file")
            continue
        out.append(opt)
    if bad:
        raise InvalidInput(f"nativeOptions not allowed: {', '.join(bad)}", errors={"nativeOptions": messages})
    return out


def check_environment(env: dict | None) -> dict[str, str]:
    """The client's environment, checked: names are shell-style, values hold no NUL."""
    errors, out = [], {}
    for name, value in (env or {}).items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            errors.append(f"{name!r}: a variable name is letters, digits and '_', not starting with a digit")
            continue
        value = "" if value is None else str(value)
        if "\x00" in value:
            errors.append(f"{name}: the value must not contain NUL characters")
            continue
        out[name] = value
    if errors:
        raise InvalidInput("invalid environment: " + "; ".join(errors), errors={"environment": errors})
    return out


def print_environment() -> list[str]:
    """The environment sbatch would see, NUL-separated (the base of the export file)."""
    return ["env", "-0"]


def export_file(base_env: bytes, env: dict[str, str], job_name: str) -> bytes:
    """sbatch --export-file content: NAME=value entries separated by NUL.

    With --export-file, Slurm 22.05 builds the job's environment from the file alone (it
    ignores --export=ALL) and leaves out SLURM_JOB_NAME, so ``%x`` in --output expands to
    ``(null)``. The file therefore holds what --export=ALL would have sent: the submitting
    account's environment (``base_env``, from :func:`print_environment`), SLURM_JOB_NAME,
    then the client's variables.
    """
    merged: dict[bytes, bytes] = {}
    for entry in base_env.split(b"\x00"):
        key, sep, value = entry.partition(b"=")
        if sep and key:
            merged[key] = value
    merged[b"SLURM_JOB_NAME"] = job_name.encode("utf-8", "surrogateescape")
    for key, value in env.items():
        merged[key.encode()] = value.encode("utf-8", "surrogateescape")
    return b"".join(k + b"=" + v + b"\x00" for k, v in merged.items())


def default_job_name(spec: JobSpec) -> str:
    """The name sbatch gives a job without --job-name."""
    if spec.name is not None:
        return spec.name
    if spec.command is not None:
        return "wrap"
    if spec.script_location and not spec.script_location.startswith("s3://"):
        return spec.script_location.rstrip("/").rsplit("/", 1)[-1]
    return "sbatch"


def owner_comment(user_name: str) -> str:
    """The comment that makes a service-account job ``user_name``'s (see OWNER_TAG)."""
    if not isinstance(user_name, str) or not OWNER_NAME.match(user_name):
        raise Forbidden(f"the user name {user_name!r} cannot be recorded on a Slurm job "
                        "(letters, digits and _ . @ - only)")
    return OWNER_TAG + user_name


def sbatch(spec: JobSpec, *, default_work_dir: str, allowed_native: Iterable[str],
           script_path: str | None = None, export_file: str | None = None,
           owner: str | None = None) -> list[str]:
    """The sbatch argument list for ``spec``; the script body (if any) goes on stdin.

    ``default_work_dir``: the job's directory when the spec has no workDir (the user's home:
    sbatch would otherwise use the gateway's own working directory).

    ``script_path``: a script on the cluster (``scriptLocation``). ``spec.command`` becomes
    ``--wrap``. ``export_file``: the file holding the job's environment (see
    :func:`export_file`): an environment never travels on the command line, where commas
    would split it (``--export=A=1,2``), nor in sbatch's own environment, where LD_PRELOAD
    or PATH would act on the head node.

    ``owner``: run_as: service's gateway user, recorded as the job's comment, before the
    native options (which may then hold no --comment: the scheduler takes it off their
    allow-list). Not after them: an operator's allowed option given bare, one that takes a
    value (``--container``), took the comment as its value, and the script's ``#SBATCH
    --comment`` named another user. A command-line option beats the script's #SBATCH
    lines wherever it stands.
    """
    errors: dict[str, list[str]] = {}
    for field, value in (("name", spec.name), ("queue", spec.queue), ("workDir", spec.work_dir),
                         ("stdout", spec.stdout), ("stderr", spec.stderr), ("array", spec.array),
                         ("dependency", spec.dependency), ("command", spec.command),
                         ("scriptLocation", spec.script_location), ("script", spec.script)):
        _no_nul(field, value, errors)
    if spec.work_dir is not None and not spec.work_dir.startswith("/"):
        errors.setdefault("workDir", []).append("must be an absolute path")
    if spec.queue is not None and not PARTITION_NAME.match(spec.queue):
        errors.setdefault("queue", []).append("not a partition name")
    for field, value in (("nodes", spec.nodes), ("cpus", spec.cpus), ("cpusPerTask", spec.cpus_per_task),
                         ("memoryMB", spec.memory_mb), ("timeLimitMinutes", spec.time_limit_minutes)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            errors.setdefault(field, []).append("must be a positive integer")
    if (isinstance(spec.cpus, int) and isinstance(spec.cpus_per_task, int) and spec.cpus >= 1
            and spec.cpus_per_task >= 1 and spec.cpus % spec.cpus_per_task):
        errors.setdefault("cpus", []).append("must be a multiple of cpusPerTask")
    if errors:
        raise InvalidInput("invalid job: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()),
                           errors=errors)
    native = check_native_options(spec.native_options or [], allowed_native)

    argv = ["sbatch", "--parsable", f"--chdir={spec.work_dir or default_work_dir}"]
    if spec.name is not None:
        argv.append(f"--job-name={spec.name}")
    if spec.queue is not None:
        argv.append(f"--partition={spec.queue}")
    if spec.nodes is not None:
        argv.append(f"--nodes={spec.nodes}")
    if spec.cpus is not None and spec.cpus_per_task is not None:
        argv += [f"--ntasks={spec.cpus // spec.cpus_per_task}", f"--cpus-per-task={spec.cpus_per_task}"]
    elif spec.cpus is not None:
        argv.append(f"--ntasks={spec.cpus}")
    elif spec.cpus_per_task is not None:
        argv.append(f"--cpus-per-task={spec.cpus_per_task}")
    if spec.memory_mb is not None:
        argv.append(f"--mem={spec.memory_mb}M")
    if spec.time_limit_minutes is not None:
        argv.append(f"--time={spec.time_limit_minutes}")
    if spec.stdout is not None:
        argv.append(f"--output={spec.stdout}")
    if spec.stderr is not None:
        argv.append(f"--error={spec.stderr}")
    if spec.array is not None:
        argv.append(f"--array={spec.array}")
    if spec.dependency is not None:
        argv.append(f"--dependency={spec.dependency}")
    if spec.hold:
        argv.append("--hold")
    if export_file is not None:
        argv += ["--export=ALL", f"--export-file={export_file}"]
    if owner is not None:
        if any(o == "--comment" or o.startswith("--comment=") for o in native):
            raise InvalidInput("nativeOptions may not set --comment here: it records the gateway user",
                               errors={"nativeOptions": ["--comment: not allowed"]})
        argv.append(f"--comment={owner_comment(owner)}")
    argv += native
    if spec.command is not None:
        argv.append(f"--wrap={spec.command}")
    elif script_path is not None:
        argv += ["--", script_path]
    return argv
