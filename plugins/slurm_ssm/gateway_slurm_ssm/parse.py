"""Slurm's outputs parsed into the gateway's model: pure functions, no I/O.

Every function here is unit-tested on output captured from a real Slurm 22.05
(tests/plugins/slurm_ssm/fixtures/).
"""
from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone

from gateway.errors import (Conflict, Forbidden, GatewayError, InvalidInput, NotFound,
                            SchedulerRefused, SchedulerUnavailable)
from gateway.models import Host, Job, JobState, Queue

from .commands import FIELD_SEP, FORMAT_FIELDS, OWNER_TAG, RECORD_SEP, USER_SUSPEND_MARK

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- states

# Long and compact names (squeue %T / %t, JSON job_state) -> normalized state.
_STATES = {
    "PENDING": JobState.PENDING, "PD": JobState.PENDING,
    "REQUEUED": JobState.PENDING, "RQ": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING, "RF": JobState.PENDING,
    "REQUEUE_HOLD": JobState.HELD, "RH": JobState.HELD,
    "RESV_DEL_HOLD": JobState.HELD, "RD": JobState.HELD,
    "SPECIAL_EXIT": JobState.HELD, "SE": JobState.HELD,
    "RUNNING": JobState.RUNNING, "R": JobState.RUNNING,
    "CONFIGURING": JobState.RUNNING, "CF": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING, "CG": JobState.RUNNING,
    "RESIZING": JobState.RUNNING, "RS": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING, "SI": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING, "SO": JobState.RUNNING,
    "SUSPENDED": JobState.SUSPENDED, "S": JobState.SUSPENDED,
    "STOPPED": JobState.SUSPENDED, "ST": JobState.SUSPENDED,
    "CANCELLED": JobState.CANCELLED, "CA": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED, "RV": JobState.CANCELLED,
    "COMPLETED": JobState.COMPLETED, "CD": JobState.COMPLETED,
    "FAILED": JobState.FAILED, "F": JobState.FAILED,
    "TIMEOUT": JobState.FAILED, "TO": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED, "NF": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED, "OOM": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED, "BF": JobState.FAILED,
    "DEADLINE": JobState.FAILED, "DL": JobState.FAILED,
    "PREEMPTED": JobState.FAILED, "PR": JobState.FAILED,
}

# Pending reasons that mean "held": released only by scontrol release.
_HELD_REASONS = ("JobHeldUser", "JobHeldAdmin", "job_requeued_in_held_state", "Held")


def normalize_state(native: str | None, reason: str | None = None, exit_code: int | None = None) -> JobState:
    """The normalized state of a Slurm job state (long or compact name, flags after '+')."""
    if not native:
        return JobState.UNKNOWN
    base = native.split("+")[0].split(" ")[0].upper()
    state = _STATES.get(base, JobState.UNKNOWN)
    if state is JobState.PENDING and reason and reason.startswith(_HELD_REASONS):
        return JobState.HELD
    if state is JobState.COMPLETED and exit_code not in (None, 0):
        return JobState.FAILED
    return state


def decode_wait_status(status: int | None) -> int | None:
    """A raw wait(2) status (squeue --json exit_code) as a shell would show it: 3 or 128+signal."""
    if status is None:
        return None
    status = int(status)
    if status & 0x7F:
        return 128 + (status & 0x7F)
    return (status >> 8) & 0xFF


def parse_exit_code(text: str | None) -> int | None:
    """scontrol's ``ExitCode=3:0`` (code:signal) as a shell would show it."""
    if not text or ":" not in text:
        return None
    code, _, sig = text.partition(":")
    try:
        code_i, sig_i = int(code), int(sig)
    except ValueError:
        return None
    return 128 + sig_i if sig_i else code_i


# ---------------------------------------------------------------- small value parsers

def epoch(value) -> datetime | None:
    try:
        value = int(value)
    except (TypeError, ValueError):
        return None
    if value <= 0:
        return None
    return datetime.fromtimestamp(value, tz=timezone.utc)


def parse_time_limit(text: str | None) -> int | None:
    """Slurm durations ([days-]hours:minutes:seconds, minutes[:seconds], ...) in minutes."""
    if not text or text in ("UNLIMITED", "NOT_SET", "INFINITE", "N/A", "NONE", "Partition_Limit"):
        return None
    try:
        return _time_limit_minutes(text)
    except ValueError:
        return None                  # a word this plugin does not know (INVALID, Unknown...)


def _time_limit_minutes(text: str) -> int:
    days = 0
    if "-" in text:
        d, _, text = text.partition("-")
        days = int(d)
        parts = [int(p) for p in text.split(":")]
        while len(parts) < 3:
            parts.append(0)          # days-hours[:minutes[:seconds]]
        h, m, s = parts
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 3:
            h, m, s = parts
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = 0, parts[0], 0
    return days * 1440 + h * 60 + m + (1 if s else 0)


_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_memory_mb(text: str | None) -> int | None:
    """``64M``, ``2G``, ``100`` (MB) -> MB; ``0``/empty -> None."""
    if not text:
        return None
    m = re.match(r"([0-9.]+)([KMGT]?)", text.strip().upper())
    if not m:
        return None
    value = float(m.group(1)) * _MEM_UNITS.get(m.group(2) or "M", 1)
    return int(value) or None


def expand_hostlist(text: str | None) -> list[str]:
    """``vm``, ``n[1-3,5],gpu01`` -> host names (zero padding kept)."""
    if not text or text in ("(null)", "None assigned", "N/A"):
        return []
    hosts: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", text):
        m = re.match(r"([^\[]*)\[([^\]]*)\](.*)\Z", item)
        if not m:
            hosts.append(item)
            continue
        prefix, ranges, rest = m.groups()
        tails = expand_hostlist(rest) if "[" in rest else [rest]
        for rng in ranges.split(","):
            lo, _, hi = rng.partition("-")
            if hi:
                width = len(lo) if lo.startswith("0") else 0
                for n in range(int(lo), int(hi) + 1):
                    for tail in tails:
                        hosts.append(f"{prefix}{str(n).zfill(width)}{tail}")
            else:
                for tail in tails:
                    hosts.append(f"{prefix}{lo}{tail}")
    return hosts


def array_spec_contains(spec: str, task: int) -> bool:
    """Whether task index ``task`` is in an array spec like ``2-5%1`` or ``1,3,5-11:2``."""
    spec = spec.split("%")[0]
    for part in spec.split(","):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        try:
            lo_i = int(lo)
            hi_i = int(hi) if hi else lo_i
            step_i = int(step) if step else 1
        except ValueError:
            continue
        if lo_i <= task <= hi_i and (task - lo_i) % step_i == 0:
            return True
    return False


def expand_output_pattern(pattern: str | None, *, job_id: str, array_job_id: str | None = None,
                          array_task_id: str | None = None, user: str | None = None,
                          name: str | None = None, node: str | None = None,
                          work_dir: str | None = None) -> str | None:
    """A job's stdout/stderr path with sbatch's filename pattern (``%j``, ``%x``...) filled in.

    ``pattern`` empty means sbatch's default: ``slurm-%j.out`` (``slurm-%A_%a.out`` for
    array tasks) in the work dir. A pattern holding a backslash is not expanded (sbatch's rule).
    """
    if not pattern:
        pattern = "slurm-%A_%a.out" if array_task_id is not None else "slurm-%j.out"
    if "\\" not in pattern:
        values = {
            "A": array_job_id or job_id, "a": array_task_id if array_task_id is not None else "4294967294",
            "j": job_id, "J": job_id, "u": user or "", "x": name or "", "N": node or "",
            "n": "0", "s": "4294967294", "t": "0",
        }

        def sub(m: re.Match) -> str:
            width, letter = m.group(1), m.group(2)
            if letter == "%":
                return "%"
            value = values.get(letter)
            if value is None:
                return m.group(0)
            return value.zfill(int(width)) if width and value.isdigit() else value

        pattern = re.sub(r"%([0-9]*)([%AajJuxNnst])", sub, pattern)
    else:
        pattern = pattern.replace("\\", "")
    if work_dir and not pattern.startswith("/"):
        pattern = work_dir.rstrip("/") + "/" + pattern
    return pattern


# ---------------------------------------------------------------- squeue

def owner_tag(comment: str | None) -> str | None:
    """The gateway user a job's comment names (commands.owner_comment), or None."""
    if comment and comment.startswith(OWNER_TAG) and len(comment) > len(OWNER_TAG):
        return comment[len(OWNER_TAG):]
    return None


def user_suspension(admin_comment: str | None, suspend_time) -> tuple[bool, str]:
    """(was this suspension its owner's, the admin comment without the gateway's mark)."""
    comment = admin_comment or ""
    if not comment.startswith(USER_SUSPEND_MARK):
        return False, comment
    stamp, _, rest = comment[len(USER_SUSPEND_MARK):].partition(" ")
    return stamp == str(suspend_time) and bool(suspend_time), rest


def _reason(value: str | None) -> str | None:
    return None if value in (None, "", "None", "(null)") else value


def job_from_json(j: dict) -> tuple[Job, dict]:
    """One squeue --json record -> (Job, extra) where extra keeps what the Job has no field for."""
    job_id = str(j["job_id"])
    array_job_id = j.get("array_job_id") or 0
    task_id = j.get("array_task_id")
    task_string = j.get("array_task_string") or ""
    if array_job_id and task_id is not None:
        display_id = f"{array_job_id}_{task_id}"
    elif array_job_id and task_string:
        display_id = f"{array_job_id}_[{task_string}]"
    else:
        display_id = job_id
    native = j.get("job_state") or ""
    reason = _reason(j.get("state_reason"))
    state = normalize_state(native, reason)
    exit_code = decode_wait_status(j.get("exit_code")) if state.is_final or native == "COMPLETED" else None
    state = normalize_state(native, reason, exit_code)
    hosts = expand_hostlist(j.get("nodes"))
    cpus = j.get("cpus")
    if not cpus:                      # null for a job cancelled while pending: use the request
        m = re.search(r"(?:^|,)cpu=(\d+)", j.get("tres_req_str") or "")
        cpus = int(m.group(1)) if m else None
    mem = j.get("memory_per_node")
    if not mem and j.get("memory_per_cpu") and cpus:
        mem = j["memory_per_cpu"] * cpus
    name = j.get("name")
    user = j.get("user_name")
    work_dir = j.get("current_working_directory") or None
    pattern_args = dict(job_id=job_id, array_job_id=str(array_job_id) if array_job_id else None,
                        array_task_id=str(task_id) if task_id is not None else None, user=user,
                        name=name, node=hosts[0] if hosts else None, work_dir=work_dir)
    stdout = expand_output_pattern(j.get("standard_output"), **pattern_args)
    stderr = expand_output_pattern(j.get("standard_error") or j.get("standard_output"), **pattern_args)
    job = Job(
        job_id=display_id, name=name, user_name=user, queue=j.get("partition") or None,
        state=state, native_state=native or None, reason=reason, exit_code=exit_code,
        submit_time=epoch(j.get("submit_time")),
        start_time=epoch(j.get("start_time")) if state is not JobState.PENDING and state is not JobState.HELD else None,
        end_time=epoch(j.get("end_time")) if state.is_final else None,
        hosts=hosts, nodes=j.get("node_count"), cpus=cpus, memory_mb=mem or None,
        time_limit_minutes=j.get("time_limit") or None, work_dir=work_dir,
        stdout_path=stdout, stderr_path=stderr, command=j.get("command") or None,
    )
    extra = {"id": job_id, "array_job_id": str(array_job_id) if array_job_id else None,
             "array_task_id": str(task_id) if task_id is not None else None,
             "array_tasks": task_string or None}
    tagged = owner_tag(j.get("comment"))
    if tagged:
        extra["owner_tag"] = tagged      # read (and dropped) by the scheduler under run_as: service
    if state is JobState.SUSPENDED:
        # who may resume it (commands.USER_SUSPEND_MARK): only squeue --json shows these
        extra["admin_comment"] = j.get("admin_comment") or ""
        extra["suspend_time"] = j.get("suspend_time") or 0
    return job, extra


def json_errors(doc: dict) -> list[str]:
    out = []
    for err in doc.get("errors") or []:
        if isinstance(err, dict):
            out.append(": ".join(str(err[k]) for k in ("source", "description", "error") if err.get(k)))
        else:
            out.append(str(err))
    return out


def parse_squeue_json(text: str) -> list[tuple[Job, dict]]:
    """squeue --json -> jobs. Raises SchedulerUnavailable when squeue reports errors: it
    exits 0 with an empty job list and an ``errors`` entry when the controller is down."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SchedulerRefused(f"squeue --json printed something that is not JSON: {exc}") from exc
    errors = json_errors(doc)
    if errors:
        raise SchedulerUnavailable("squeue failed: " + "; ".join(errors))
    out = []
    for j in doc.get("jobs") or []:
        try:
            out.append(job_from_json(j))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Not a job to leave out quietly: a record this plugin cannot read means a JSON
            # layout it does not know (a newer Slurm), so every job would be misread.
            job_id = j.get("job_id") if isinstance(j, dict) else None
            raise SchedulerRefused(f"cannot read squeue --json's record of job {job_id}: {exc!r}; "
                                   "this Slurm's JSON layout is not one the plugin knows: set the "
                                   "slurm_ssm option json: no (format strings)") from exc
    return out


def _na(value: str) -> str | None:
    return None if value in ("", "N/A", "(null)", "None") else value


def job_from_format(values: dict) -> tuple[Job, dict]:
    """One record of :func:`commands.squeue_format` (times as epoch seconds)."""
    job_id = values["JobID"]
    display_id = values["JobArrayID"] or job_id
    if "+" in display_id:
        # A het job's component (628+1): its own job id, as squeue --json gives it (a
        # "628+1" could not be asked for again).
        display_id = job_id
    array_job_id = _na(values["ArrayJobID"])
    task_id = _na(values["ArrayTaskID"])
    task_string = None
    if "_[" in display_id:
        task_string = display_id.split("_[", 1)[1].rstrip("]")
        task_id = None
    elif "_" not in display_id:
        array_job_id = None if array_job_id == job_id and task_id is None else array_job_id
    native = values["State"]
    reason = _reason(values["Reason"])
    state = normalize_state(native, reason)
    hosts = expand_hostlist(_na(values["NodeList"]))
    work_dir = _na(values["WorkDir"])
    stdout = _na(values["STDOUT"])
    stderr = _na(values["STDERR"])
    # squeue -O fills in the default name with the task's own job id (slurm-<JobID>.out),
    # where sbatch writes slurm-<ArrayJobID>_<TaskID>.out.
    if task_id is not None and work_dir:
        wrong = f"{work_dir.rstrip('/')}/slurm-{job_id}.out"
        right = f"{work_dir.rstrip('/')}/slurm-{array_job_id}_{task_id}.out"
        stdout = right if stdout == wrong else stdout
        stderr = right if stderr == wrong else stderr
    # ...and gives a pattern the user set (--output=o-%j.out) as it is.
    pattern_args = dict(job_id=job_id, array_job_id=array_job_id, array_task_id=task_id,
                        user=values["UserName"], name=values["Name"], node=hosts[0] if hosts else None,
                        work_dir=work_dir)
    stdout = _expand_printed_path(stdout, pattern_args)
    stderr = _expand_printed_path(stderr, pattern_args)
    cpus = int(values["NumCPUs"]) if values["NumCPUs"].isdigit() else None
    nodes = int(values["NumNodes"]) if values["NumNodes"].isdigit() else None
    mem = _format_memory_mb(_na(values["MinMemory"]), _na(values["tres-alloc"]), nodes)
    exit_code = 0 if state is JobState.COMPLETED else None
    job = Job(
        job_id=display_id, name=values["Name"], user_name=values["UserName"] or None,
        queue=_na(values["Partition"]), state=state, native_state=native or None, reason=reason,
        exit_code=exit_code, submit_time=epoch(values["SubmitTime"]),
        start_time=epoch(values["StartTime"]) if state not in (JobState.PENDING, JobState.HELD) else None,
        end_time=epoch(values["EndTime"]) if state.is_final else None,
        hosts=hosts, nodes=nodes, cpus=cpus, memory_mb=mem,
        time_limit_minutes=parse_time_limit(_na(values["TimeLimit"])), work_dir=work_dir,
        stdout_path=stdout, stderr_path=stderr or stdout, command=_na(values["Command"]),
    )
    extra = {"id": job_id, "array_job_id": array_job_id, "array_task_id": task_id, "array_tasks": task_string}
    tagged = owner_tag(values.get("Comment"))
    if tagged:
        extra["owner_tag"] = tagged
    return job, extra


def _format_memory_mb(min_memory: str | None, tres: str | None, nodes: int | None) -> int | None:
    """The memory squeue -O prints as MinMemory is per node or per CPU, whichever was asked
    for, and does not say which; tres-alloc has the job's total. As the JSON path: per node
    when that was asked for, else the total (--mem-per-cpu x CPUs). Where that cannot be
    told (as many CPUs as nodes: -N2 -n2 --mem-per-cpu=64M), the per-node reading (64)."""
    per = parse_memory_mb(min_memory)
    m = re.search(r"(?:^|,)mem=([0-9.]+[KMGT]?)(?:,|$)", tres or "")
    total = parse_memory_mb(m.group(1)) if m else None
    if total is None or per is None or per * (nodes or 1) == total:
        return per if per is not None else total
    return total


def _expand_printed_path(path: str | None, pattern_args: dict) -> str | None:
    """squeue -O STDOUT: a relative pattern comes back joined to the work dir, whose own
    name may hold '%': expand only what follows it."""
    if not path or "%" not in path:
        return path
    work_dir = pattern_args.get("work_dir")
    prefix = work_dir.rstrip("/") + "/" if work_dir else None
    if prefix and path.startswith(prefix):
        return expand_output_pattern(path[len(prefix):], **pattern_args)
    return expand_output_pattern(path, **pattern_args)


_SKIPPED_LOGGED: set[str] = set()      # records already logged as left out


def read_squeue_format(text: str, fields: tuple[str, ...] = FORMAT_FIELDS
                       ) -> tuple[list[tuple[Job, dict]], list[str]]:
    """squeue's format-string records, and what made the output ambiguous.

    Free-text fields (name, paths, command) are set by users and may hold the separators
    (sbatch -J $'a\\x1fb' is accepted). A record that cannot be read is left out (and logged
    once), and since separators can also forge whole records, a job id printed twice is
    left out with every copy: only squeue --json can say which is real (the scheduler
    reads that refresh with --json when it can)."""
    out, problems = [], []
    for record in text.split(RECORD_SEP):
        record = record.lstrip("\n")
        if not record:
            continue
        parts = record.split(FIELD_SEP)
        try:
            if len(parts) != len(fields):
                raise ValueError(f"{len(parts)} fields, expected {len(fields)}")
            out.append(job_from_format(dict(zip(fields, parts))))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            problems.append(f"a record left out ({exc})")
            key = record[:120]
            if key not in _SKIPPED_LOGGED and len(_SKIPPED_LOGGED) < 1000:
                _SKIPPED_LOGGED.add(key)
                log.warning("squeue record left out (%s): %r", exc, record[:200])
    seen: dict[str, int] = {}
    for job, _ in out:
        seen[job.job_id] = seen.get(job.job_id, 0) + 1
    twice = {job_id for job_id, n in seen.items() if n > 1}
    if twice:
        problems.append(f"job ids printed more than once: {', '.join(sorted(twice)[:10])}")
        out = [(job, extra) for job, extra in out if job.job_id not in twice]
    return out, problems


def parse_squeue_format(text: str, fields: tuple[str, ...] = FORMAT_FIELDS) -> list[tuple[Job, dict]]:
    """The records :func:`read_squeue_format` could read unambiguously; SchedulerRefused
    when there were records and none could be."""
    out, problems = read_squeue_format(text, fields)
    if problems and not out:
        raise SchedulerRefused(f"squeue printed {len(problems)} records and none could be read")
    return out


# ---------------------------------------------------------------- scontrol key=value

_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:.]*)=")


def parse_oneliner(line: str, tail_keys: tuple[str, ...] = ("Reason",)) -> dict[str, str]:
    """One ``scontrol --oneliner`` record -> dict. Values may hold spaces (``OS=Linux 6.1 #1``);
    a key in ``tail_keys`` takes the rest of the line, since its free text may hold ``a=b``."""
    line = line.rstrip("\n")
    tail: dict[str, str] = {}
    for key in tail_keys:
        idx = line.find(f" {key}=")
        if idx >= 0:
            tail[key] = line[idx + len(key) + 2:].strip()
            line = line[:idx]
    out: dict[str, str] = {}
    matches = list(_KEY.finditer(line))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    out.update(tail)
    return out


_EXIT_CODE = re.compile(r"(?:^|\s)ExitCode=(\S+)")


def parse_show_job_exit_code(text: str, name: str | None = None) -> int | None:
    """The exit code of ``scontrol --oneliner show job``'s first record; None when unsure.

    Free text a user chose comes both before Slurm's ``ExitCode=`` (JobName, and MCS_label:
    Slurm 22.05's mcs/none keeps ``--mcs-label="x ExitCode=0:0"`` as given) and after it
    (Comment, Command, WorkDir, StdOut...), and may say ``ExitCode=0:0`` itself. So the name
    (squeue printed it) is skipped, and the code is believed only when every ``ExitCode=``
    after it says the same: a forged one makes it unknown, never another number."""
    for line in text.splitlines():
        if not line.strip():
            continue
        start = 0
        if name is not None:
            head = f" JobName={name} "
            idx = line.find(head)
            if idx < 0:
                return None
            start = idx + len(head) - 1
        codes = {m.group(1) for m in _EXIT_CODE.finditer(line, start)}
        return parse_exit_code(codes.pop()) if len(codes) == 1 else None
    return None


def _host_state(native: str, flags: list[str]) -> str:
    native = native.upper()
    flags = [f.upper() for f in flags]
    # NOT_RESPONDING alone is transient (e.g. just after a resume, until slurmctld's next
    # ping): Slurm itself calls the node DOWN once SlurmdTimeout has passed.
    if native.startswith(("DOWN", "FAIL")):
        return "down"
    if native.startswith(("DRAIN",)) or "DRAIN" in flags:
        return "closed"
    if native.startswith(("IDLE", "MIXED", "ALLOCATED", "COMPLETING", "ALLOC", "MIX", "PLANNED")):
        return "ok"
    return "unknown"


def parse_nodes_oneliner(text: str) -> list[Host]:
    """``scontrol --oneliner show node``."""
    hosts = []
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        d = parse_oneliner(line)
        native = d.get("State", "")
        base, *flags = native.split("+")
        cpus = int(d["CPUTot"]) if d.get("CPUTot", "").isdigit() else None
        hosts.append(Host(
            name=d["NodeName"], state=_host_state(base, flags), native_state=native or None,
            cpus=cpus, max_slots=cpus, memory_mb=parse_memory_mb(d.get("RealMemory")),
            reason=_reason(d.get("Reason"))))
    return hosts


def parse_sinfo_json(text: str) -> list[Host]:
    """``sinfo --json`` (22.05: nodes only)."""
    doc = json.loads(text)
    errors = json_errors(doc)
    if errors:
        raise SchedulerUnavailable("sinfo failed: " + "; ".join(errors))
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        # Newer releases nest it ({"sinfo": [...]}): an empty host list would say no host exists.
        raise SchedulerRefused("sinfo --json printed a layout this plugin does not read (no 'nodes' "
                               "list); set json: \"no\"")
    hosts = []
    for n in doc["nodes"]:
        try:
            state = n.get("state") or ""
            flags = list(n.get("state_flags") or [])
            if isinstance(state, list):          # 23.02+: ["IDLE", "DRAIN"], flags included
                state, flags = (str(state[0]), [str(f) for f in state[1:]] + flags) if state else ("", flags)
            native = "+".join([state.upper(), *flags]) if state else None
            hosts.append(Host(
                name=n["name"], state=_host_state(state, flags), native_state=native,
                cpus=n.get("cpus"), max_slots=n.get("cpus"), memory_mb=n.get("real_memory") or None,
                reason=n.get("reason") or None))
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            # A layout this plugin does not read: a 502 that says so, not a 500.
            raise SchedulerRefused(f"cannot read sinfo --json's record of a node ({exc!r}): a layout "
                                   "this plugin does not read; set json: \"no\"") from exc
    return hosts


_PARTITION_STATES = {"UP": (True, True), "DOWN": (True, False), "DRAIN": (False, True),
                     "INACTIVE": (False, False)}


def partition_state_for(open_: bool, active: bool) -> str:
    for state, flags in _PARTITION_STATES.items():
        if flags == (open_, active):
            return state
    raise ValueError((open_, active))


def parse_partitions(text: str) -> list[Queue]:
    """``scontrol --all --oneliner show partition``: UP = open and active, DOWN = open but not
    dispatching, DRAIN = closed to new jobs but dispatching, INACTIVE = neither."""
    queues = []
    for line in text.splitlines():
        if not line.startswith("PartitionName="):
            continue
        d = parse_oneliner(line, tail_keys=())
        native = d.get("State", "")
        open_, active = _PARTITION_STATES.get(native.upper(), (False, False))
        cpus = d.get("TotalCPUs", "")
        prio = d.get("PriorityTier", "")
        queues.append(Queue(
            name=d["PartitionName"], open=open_, active=active, native_state=native or None,
            priority=int(prio) if prio.isdigit() else None, is_default=d.get("Default") == "YES",
            max_slots=int(cpus) if cpus.isdigit() else None,
            time_limit_minutes=parse_time_limit(d.get("MaxTime")),
            hosts=expand_hostlist(d.get("Nodes"))))
    return queues


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config`` (``Key  = value`` lines)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def parse_ping(text: str) -> tuple[bool, str]:
    """``scontrol ping``: (controller up, its words)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("Slurmctld")]
    ok = any(ln.endswith("is UP") for ln in lines)
    return ok, "; ".join(lines) or text.strip()


def says_down(words: str) -> bool:
    """Whether parse_ping's words name a controller that is DOWN (not just no UP: a ping
    that failed otherwise, e.g. sudo's refusal, says nothing about the controller)."""
    return bool(re.search(r"^Slurmctld\(\w+\) at \S+ is DOWN", words or "", re.M))


def parse_version(text: str) -> tuple[int, int] | None:
    m = re.search(r"(\d+)\.(\d+)\.\d+", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_sbatch(stdout: str) -> str:
    """``sbatch --parsable`` prints ``<id>`` or ``<id>;<cluster>``."""
    for line in stdout.splitlines():
        line = line.strip()
        if line:
            job_id = line.split(";")[0]
            if job_id.isdigit():
                return job_id
    raise SchedulerRefused(f"sbatch printed no job id: {stdout.strip()[:200]!r}")


def parse_getent_home(stdout: str) -> str | None:
    line = stdout.strip().splitlines()[0] if stdout.strip() else ""
    parts = line.split(":")
    return parts[5] if len(parts) >= 7 and parts[5].startswith("/") else None


# ---------------------------------------------------------------- refusals

# The controller cannot be reached: 503, try again later.
_UNAVAILABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted|"
    r"Communication connection failure|Connection refused|Slurmctld\(\w+\) at \S+ is DOWN|"
    r"Unable to establish|Could not establish a configuration source|"
    # munge's own failures only: the bare word is in users' file names too (munge_results.sh)
    r"Munge (?:encode|decode) failed|munge\.socket|auth/munge|Slurm backup controller in standby|"
    r"Slurmctld is not responding|Unable to resolve|Transport endpoint", re.I)
_NOT_FOUND = re.compile(r"Invalid job id specified|Invalid node name specified|"
                        r"Invalid partition name specified|Job not found", re.I)
_CONFLICT = re.compile(
    r"Job is not suspended|Job is pending execution|Job is no longer pending execution|"
    r"already completing or completed|Job has already finished|Job is suspended|"
    r"Requested operation is presently disabled|Job is current|Job not held|"
    r"Job is already|operation disabled|Invalid node state specified|already in requested state",
    re.I)
# Of the conflicts, those of a job that has ended (a task that ended between a look at the
# queue and the action on it).
_ENDED = re.compile(r"already completing or completed|Job has already finished", re.I)


def ended_since(words: str) -> bool:
    """Whether Slurm refused because the job has ended (scontrol: '<id>: Job/step already
    completing or completed')."""
    return bool(_ENDED.search(words or ""))


_FORBIDDEN = re.compile(r"Access/permission denied|Invalid user id|sudo: unknown user|User not found|"
                        r"not permitted to use this partition", re.I)
# Where the client's input is at fault (sbatch and friends): 422.
_INPUT = re.compile(
    r"Invalid partition name specified|invalid|unrecognized option|requires an argument|"
    r"Unable to open file|does not look like a batch script|Batch script is empty|"
    r"DOS line breaks|Requested node configuration is not available|"
    r"Requested time limit|Job dependency problem|Memory specification can not be satisfied|"
    r"More processors requested than permitted|Node count specification|"
    r"Requested partition configuration not available|Required partition not available|"
    r"not available now|QOS|specification|too many|must be|Illegal|not a valid", re.I)


def scheduler_words(stdout: str, stderr: str) -> str:
    """The scheduler's own message, verbatim (stderr first), on one line per message."""
    text = (stderr or "").strip() or (stdout or "").strip()
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines) or "the command failed without a message"


def refusal(stdout: str, stderr: str, *, input_errors: bool = False) -> GatewayError:
    """The gateway error for a failed Slurm command. ``input_errors``: the command carried the
    client's input (sbatch), so words that blame the input make a 422."""
    words = scheduler_words(stdout, stderr)
    if _UNAVAILABLE.search(words):
        return SchedulerUnavailable(words)
    if _FORBIDDEN.search(words):
        return Forbidden(words)
    if not input_errors and _NOT_FOUND.search(words):
        return NotFound(words)
    if not input_errors and _CONFLICT.search(words):
        return Conflict(words)
    if input_errors and _INPUT.search(words):
        return InvalidInput(words)
    return SchedulerRefused(words)


_DENIED = re.compile(r"Access/permission denied", re.I)


_UNEXPECTED = re.compile(r"Unexpected message received", re.I)


def unexpected_message(stdout: str, stderr: str) -> bool:
    """Whether scontrol said 'Unexpected message received': 22.05's words for a job action
    while slurmctld is down, and for suspending or resuming an unknown job."""
    return bool(_UNEXPECTED.search(scheduler_words(stdout, stderr)))


def denied(words: str) -> bool:
    """Whether Slurm refused with 'Access/permission denied', its one answer to every rule it
    keeps on who may change what (limits, partitions, another's job)."""
    return bool(_DENIED.search(words or ""))


def update_refusal(stdout: str, stderr: str, *, time_limit: bool = False) -> GatewayError:
    """The gateway error for a failed ``scontrol update JobId=...`` (a change the client asked
    for): an unknown partition or a refused value is the client's input (422), an unknown job
    a 404, a state that forbids the change a 409. ``time_limit``: the change set a time limit,
    and the plugin had checked that the job waits and its partition allows it; Slurm's
    'Access/permission denied' then says no more than that the limit is refused (a QOS or
    an association's MaxWall, a MaxTime changed meanwhile): the field is named."""
    words = scheduler_words(stdout, stderr)
    if re.search(r"Invalid partition name specified", words, re.I):
        return InvalidInput(words, errors={"queue": ["no such partition"]})
    if time_limit and (denied(words) or re.search(r"Requested time limit", words, re.I)):
        return InvalidInput(f"{words} (the time limit: Slurm lets a job's owner raise it only while the "
                            "job waits, and only as far as its partition's MaxTime and QOS allow)",
                            errors={"timeLimitMinutes": ["refused by Slurm"]})
    err = refusal(stdout, stderr)
    if type(err) is SchedulerRefused and _INPUT.search(words):
        return InvalidInput(words)
    return err


_SCANCEL_ERROR = re.compile(r"error: Kill job error on job id \S+: (.*)$", re.M)


def scancel_error(stdout: str, stderr: str) -> GatewayError | None:
    """scancel --verbose exits 0 even when it did nothing: read its words."""
    m = _SCANCEL_ERROR.search(stderr or "")
    if not m:
        return None
    words = scheduler_words("", stderr)
    words = "\n".join(ln for ln in words.splitlines() if "Terminating job" not in ln) or words
    return refusal("", words)
