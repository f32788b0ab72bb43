"""Pure parsers for what LSF-style command lines (SkyForm AIP c-commands, LSF/OpenLava
b-commands) really print. No I/O here: every function takes text (and, where times have no
year, the current time) and returns models or raises a ``gateway.errors`` class.

Rules followed throughout (see docs/aip.md):

- Success is decided from the text, never from the exit status alone: AIP's ``csub`` can
  print an authentication failure and exit 0, and ``bjobs`` exits 255 for an empty JSON list.
- Fixed-width listings are read by their header: known columns are found by name, unknown
  extra columns are tolerated. A line that cannot be understood raises SchedulerRefused
  (502) quoting the raw line; nothing is guessed.
- Times without a year (``Nov 22 00:51``, ``11/22-00:51:25``) are resolved to their most
  recent past occurrence, in the scheduler's time zone, and returned in UTC.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo

from gateway.errors import (Conflict, Forbidden, GatewayError, InvalidInput, NotFound,
                            SchedulerRefused, SchedulerUnavailable)
from gateway.models import Host, Job, JobState, Queue, UserInfo

UTC = timezone.utc

# --------------------------------------------------------------------------- states

STATE_MAP = {
    "PEND": JobState.PENDING,
    "WAIT": JobState.PENDING,
    "PSUSP": JobState.HELD,
    "RUN": JobState.RUNNING,
    "PROV": JobState.RUNNING,      # LSF: being provisioned, already dispatched
    "USUSP": JobState.SUSPENDED,
    "SSUSP": JobState.SUSPENDED,
    "DONE": JobState.COMPLETED,
    "PDONE": JobState.COMPLETED,
    "EXIT": JobState.FAILED,
    "PERR": JobState.FAILED,
    "UNKWN": JobState.UNKNOWN,
    "ZOMBI": JobState.UNKNOWN,
}


def map_state(native: str, *, killed: bool = False) -> JobState:
    """Normalized state of a native STAT; EXIT becomes CANCELLED when the job was killed."""
    state = STATE_MAP.get((native or "").strip().upper(), JobState.UNKNOWN)
    if state is JobState.FAILED and killed:
        return JobState.CANCELLED
    return state


# --------------------------------------------------------------------------- errors

def refused(what: str, raw: str) -> SchedulerRefused:
    """The 502 raised for output that cannot be understood: quotes the raw text."""
    raw = raw.strip("\n")
    if len(raw) > 500:
        raw = raw[:500] + "..."
    return SchedulerRefused(f"could not understand the output of {what}: {raw!r}")


# "Failed in an LSF library call: LIM is down; try later" / AIP's "Failed in an AIP library
# call: Authentication failed. Job not submitted." / the retry banner without LSB_NTRIES.
_LIBCALL = re.compile(r"Failed in an? (?:LSF|AIP|\w+) library call: *(?P<why>[^\n]*)", re.I)
_DOWN_WORDS = re.compile(r"is down|not responding|try later|try again later|cannot connect|"
                         r"unable to contact|connection refused|timed? ?out|"
                         r"batch system daemon|mbatchd|master lim", re.I)
_STILL_TRYING = re.compile(r"(?:LSF|AIP|batch) daemon \((?:LIM|mbatchd)\) not responding", re.I)


def scheduler_failure(text: str) -> GatewayError | None:
    """503/502 for the scheduler-wide failures any command can print, else None."""
    m = _LIBCALL.search(text)
    if m:
        line = m.group(0).strip()
        if _DOWN_WORDS.search(m.group("why")):
            return SchedulerUnavailable(line)
        return SchedulerRefused(line)
    m = _STILL_TRYING.search(text)
    if m:
        return SchedulerUnavailable(text.strip().splitlines()[0])
    if re.search(r"^ls_\w+\(\): LIM is down", text, re.M):
        return SchedulerUnavailable(text.strip().splitlines()[0])
    return None


# --------------------------------------------------------------------------- times

_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}
# Slack for a scheduler clock slightly ahead of ours: a time up to a day "in the future"
# is taken as this year's, not last year's.
_FUTURE_SLACK = timedelta(days=1)

_T_MON_DAY = re.compile(r"^(?:(?P<wd>[A-Za-z]{3})\s+)?(?P<mon>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+"
                        r"(?:(?P<year1>\d{4})\s+)?(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?"
                        r"(?:\s+(?P<year2>\d{4}))?(?:\s+[A-Z])?$")
_T_SLASH = re.compile(r"^(?:(?P<year>\d{4})/)?(?P<mon>\d{1,2})/(?P<day>\d{1,2})[-\s]"
                      r"(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?(?:\s+[A-Z])?$")


def _resolve(year: int | None, month: int, day: int, h: int, m: int, s: int,
             now: datetime, tz: tzinfo) -> datetime:
    if year is not None:
        return datetime(year, month, day, h, m, s, tzinfo=tz).astimezone(UTC)
    local_now = now.astimezone(tz)
    for y in range(local_now.year, local_now.year - 9, -1):   # Feb 29 may need 8 years
        try:
            dt = datetime(y, month, day, h, m, s, tzinfo=tz)
        except ValueError:
            continue
        if dt <= local_now + _FUTURE_SLACK:
            return dt.astimezone(UTC)
    raise ValueError("no such date")


def parse_time(text: str | None, now: datetime, tz: tzinfo = UTC) -> datetime | None:
    """A scheduler timestamp as an aware UTC datetime; None for ``-``/empty; ValueError else."""
    if text is None:
        return None
    t = text.strip()
    if t in ("", "-"):
        return None
    mt = _T_MON_DAY.match(t)
    if mt:
        mon = _MONTHS.get(mt.group("mon").lower())
        if mon is None:
            raise ValueError(f"unknown month in {text!r}")
        year = mt.group("year1") or mt.group("year2")
        return _resolve(int(year) if year else None, mon, int(mt.group("day")),
                        int(mt.group("h")), int(mt.group("m")), int(mt.group("s") or 0), now, tz)
    mt = _T_SLASH.match(t)
    if mt:
        year = mt.group("year")
        return _resolve(int(year) if year else None, int(mt.group("mon")), int(mt.group("day")),
                        int(mt.group("h")), int(mt.group("m")), int(mt.group("s") or 0), now, tz)
    raise ValueError(f"unrecognized time {text!r}")


def _time_or_refuse(value: str | None, now: datetime, tz: tzinfo, what: str,
                    raw: str) -> datetime | None:
    try:
        return parse_time(value, now, tz)
    except ValueError:
        raise refused(what, raw) from None


# --------------------------------------------------------------------------- job ids

JOB_ID_RE = re.compile(r"^(?P<id>\d{1,15})(?:\[(?P<index>\d{1,9})\])?$")


def split_job_id(job_id: str) -> tuple[str, str | None] | None:
    """``"6"`` -> ("6", None), ``"6[2]"`` -> ("6", "2"); None when malformed."""
    m = JOB_ID_RE.match(str(job_id).strip())
    if not m:
        return None
    return m.group("id"), m.group("index")


_NAME_INDEX = re.compile(r"^(?P<base>.*)\[(?P<index>\d+)\]$")


def element_id(job_id: str, name: str | None) -> tuple[str, str | None]:
    """Array elements are listed with the array's id and a name ending in ``[index]``."""
    if "[" in job_id:
        return job_id, None
    if name:
        m = _NAME_INDEX.match(name)
        if m:
            return f"{job_id}[{m.group('index')}]", m.group("index")
    return job_id, None


# --------------------------------------------------------------------------- job listings

# Field names of ``bjobs -o`` (case-insensitive) the gateway understands.
LISTING_FIELDS = ("JOBID", "USER", "STAT", "QUEUE", "FROM_HOST", "EXEC_HOST", "JOB_NAME",
                  "SUBMIT_TIME", "PROJ_NAME", "START_TIME", "FINISH_TIME")

_NO_JOBS = re.compile(r"^(?:No (?:unfinished |matching |pending |running |suspended |done |exited )?"
                      r"jobs? found|No job found)\.?$", re.I)
_JOB_NOT_FOUND = re.compile(r"Job <(?P<id>[^>]+)> is not found")
_ILLEGAL_ID = re.compile(r"(?P<id>\S+): Illegal job ID\.")


@dataclass
class Listing:
    """Records of a job listing (uppercase field names, string values) and ids not found."""
    records: list[dict] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


def parse_bjobs_json(text: str) -> Listing:
    """``bjobs -o "<fields>" -json``: ``{"COMMAND":"bjobs","JOBS":n,"RECORDS":[...]}``."""
    failure = scheduler_failure(text)
    if failure:
        raise failure
    m = re.search(r"<(?P<f>[^>]*)> in the format string is not a valid field name", text)
    if m:
        raise SchedulerRefused(m.group(0) + " (check the plugin's json_fields option)")
    start = text.find("{")
    if start < 0:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        if lines and all(_NO_JOBS.match(ln.strip()) for ln in lines):
            return Listing()
        raise refused("bjobs -json", text)
    try:
        doc, _end = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        raise refused("bjobs -json", text) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("RECORDS"), list):
        raise refused("bjobs -json", text)
    out = Listing()
    for rec in doc["RECORDS"]:
        if not isinstance(rec, dict):
            raise refused("bjobs -json", json.dumps(rec))
        rec = {str(k).upper(): ("" if v is None else str(v)) for k, v in rec.items()}
        if "ERROR" in rec:
            err = rec["ERROR"]
            if _JOB_NOT_FOUND.search(err) or "No matching job" in err:
                out.not_found.append(rec.get("JOBID", ""))
                continue
            raise SchedulerRefused(err)
        if not rec.get("JOBID"):
            raise refused("bjobs -json", json.dumps(rec))
        out.records.append(rec)
    return out


_HEADER_TOKEN = re.compile(r"\S+")


def _header(line: str) -> list[tuple[str, int, int]]:
    return [(m.group(0).upper(), m.start(), m.end()) for m in _HEADER_TOKEN.finditer(line)]


def _is_clock(tok: str) -> bool:
    return re.fullmatch(r"\d{1,2}:\d{2}(?::\d{2})?", tok) is not None


def _split_wide_line(line: str, header: list[tuple[str, int, int]], wide: bool) -> dict | None:
    names = [h[0] for h in header]
    tokens = line.split()
    name_at = names.index("JOB_NAME")
    time_at = names.index("SUBMIT_TIME")
    if time_at != name_at + 1:
        return None
    after = names[time_at + 1:]            # unknown extra columns, one token each
    rec: dict[str, str] = {}
    if after:
        if len(tokens) < len(after):
            return None
        for col, tok in zip(after, tokens[-len(after):]):
            rec[col] = tok
        tokens = tokens[:-len(after)]
    # SUBMIT_TIME: "Nov 22 00:51" or "Nov 22 2025 00:51"
    if len(tokens) >= 4 and _is_clock(tokens[-1]) and re.fullmatch(r"\d{4}", tokens[-2]) \
            and tokens[-4].lower() in _MONTHS:
        n_time = 4
    elif len(tokens) >= 3 and _is_clock(tokens[-1]) and tokens[-3].lower() in _MONTHS:
        n_time = 3
    else:
        return None
    rec["SUBMIT_TIME"] = " ".join(tokens[-n_time:])
    tokens = tokens[:-n_time]
    left = names[:name_at]
    if not wide and "EXEC_HOST" in left:
        # The narrow listing leaves a pending job's EXEC_HOST blank: look under the header.
        _, s, e = header[names.index("EXEC_HOST")]
        if line[s:e].strip() == "" and len(tokens) == len(left):
            idx = left.index("EXEC_HOST")
            tokens = tokens[:idx] + [""] + tokens[idx:]
    if len(tokens) < len(left) + 1:
        return None
    for col, tok in zip(left, tokens):
        rec[col] = tok
    rec["JOB_NAME"] = " ".join(tokens[len(left):])
    return rec


def parse_bjobs_wide(text: str, *, wide: bool = True) -> Listing:
    """``bjobs -w`` (or the narrow ``bjobs``) listing, read by its header."""
    failure = scheduler_failure(text)
    if failure:
        raise failure
    out = Listing()
    lines = text.splitlines()
    header = None
    for line in lines:
        if not line.strip():
            continue
        stripped = line.strip()
        m = _JOB_NOT_FOUND.fullmatch(stripped) or _ILLEGAL_ID.fullmatch(stripped)
        if m:
            out.not_found.append(m.group("id"))
            continue
        if _NO_JOBS.match(stripped):
            continue
        if header is None:
            h = _header(line)
            names = [x[0] for x in h]
            if names[:1] == ["JOBID"] and {"STAT", "JOB_NAME", "SUBMIT_TIME"} <= set(names):
                header = h
                continue
            raise refused("bjobs", line)
        if line[:1].isspace() and len(line.split()) == 1 and out.records:
            # continuation line of a multi-host job: one more EXEC_HOST
            prev = out.records[-1]
            prev["EXEC_HOST"] = (prev.get("EXEC_HOST", "") + ":" + stripped).lstrip(":")
            continue
        rec = _split_wide_line(line, header, wide)
        if rec is None or not rec.get("JOBID", "").isdigit():
            raise refused("bjobs", line)
        out.records.append(rec)
    return out


def _hosts_of(exec_host: str) -> list[str]:
    """``vm`` / ``4*vm:2*b`` / ``vm:vm`` / ``-`` -> distinct host names in order."""
    hosts: list[str] = []
    for part in re.split(r"[:\s]+", exec_host or ""):
        part = part.strip()
        if not part or part == "-":
            continue
        name = part.split("*", 1)[-1]
        if name not in hosts:
            hosts.append(name)
    return hosts


def record_to_job(rec: dict, now: datetime, tz: tzinfo = UTC) -> Job:
    """One listing record (JSON or wide, uppercase keys) as a Job."""
    raw = json.dumps(rec)
    native = rec.get("STAT", "").strip()
    if not native:
        raise refused("bjobs", raw)
    job_id, _index = element_id(rec["JOBID"].strip(), rec.get("JOB_NAME"))
    state = map_state(native)
    job = Job(
        job_id=job_id,
        name=rec.get("JOB_NAME") or None,
        user_name=rec.get("USER") or None,
        queue=rec.get("QUEUE") or None,
        state=state,
        native_state=native,
        submit_time=_time_or_refuse(rec.get("SUBMIT_TIME"), now, tz, "bjobs", raw),
        start_time=_time_or_refuse(rec.get("START_TIME"), now, tz, "bjobs", raw),
        end_time=_time_or_refuse(rec.get("FINISH_TIME"), now, tz, "bjobs", raw),
        hosts=_hosts_of(rec.get("EXEC_HOST", "")),
    )
    if state is JobState.COMPLETED:
        job.exit_code = 0
    if rec.get("EXIT_CODE", "").strip().lstrip("-").isdigit():     # LSF 10.1 -o exit_code
        job.exit_code = int(rec["EXIT_CODE"])
    if rec.get("COMMAND"):
        job.command = rec["COMMAND"]
    # LSF 10.1 -o runtimelimit (json_fields): "30.0", "30.0/hostA", or 00:30:00 with -hms
    limit = rec.get("RUNTIMELIMIT", rec.get("RUNLIMIT"))
    if limit is not None:
        job.time_limit_minutes = run_limit_minutes(limit)
    job.nodes = len(job.hosts) or None
    return job


_RUN_LIMIT = re.compile(r"^(?P<min>\d+(?:\.\d+)?)(?:\s*min\b.*|\s*/\S*)?$")
_RUN_LIMIT_HMS = re.compile(r"^(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2})(?:\s*/\S*)?$")


def run_limit_minutes(text: str | None) -> int | None:
    """A run limit as LSF prints it, in whole minutes (rounded; a limit under a minute is
    1, not 0): ``30.0 min of hostA`` (bjobs -l), ``30.0`` or ``30.0/hostA`` (bjobs -o
    runtimelimit), ``00:30:00`` (-hms). None for ``-``, empty or anything else."""
    t = (text or "").strip()
    m = _RUN_LIMIT.match(t)
    if m:
        return _whole_minutes(float(m.group("min")))
    m = _RUN_LIMIT_HMS.match(t)
    if m:
        return _whole_minutes(int(m.group("h")) * 60 + int(m.group("m")) + int(m.group("s")) / 60)
    return None


def _whole_minutes(minutes: float) -> int:
    # 0 would read as "no time at all" (and as a limit any change raises): a limit of
    # seconds is at least a minute.
    if 0 < minutes < 1:
        return 1
    return int(round(minutes))


# --------------------------------------------------------------------------- bjobs -l

@dataclass
class JobDetail:
    """What ``bjobs -l`` (and ``bhist -l``) say about one job beyond the listing."""
    job_id: str
    name: str | None = None
    user: str | None = None
    project: str | None = None
    status: str | None = None
    queue: str | None = None
    command: str | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    cwd: str | None = None
    exec_home: str | None = None
    exec_cwd: str | None = None
    output_file: str | None = None
    error_file: str | None = None
    processors: int | None = None
    hosts: list[str] = field(default_factory=list)
    exit_code: int | None = None
    signal: int | None = None
    killed: bool = False
    term_reason: str | None = None
    pending_reasons: list[str] = field(default_factory=list)
    suspend_reason: str | None = None
    run_limit_minutes: int | None = None
    mem_limit_mb: int | None = None
    resources: str | None = None


_STAMP = re.compile(r"^(?P<ts>[A-Z][a-z]{2} [A-Z][a-z]{2} +\d{1,2} \d{1,2}:\d{2}:\d{2}(?: \d{4})?): ")
_JOB_HEAD = re.compile(r"^Job <(?P<id>\d+(?:\[\d+\])?)>")
_SEPARATOR = re.compile(r"^-{20,}\s*$")


def _unwrap(lines: list[str]) -> list[str]:
    """Join LSF's 80-column wrapping: continuation lines are indented to the text column
    (21 characters after ``Sun Nov 22 00:51:25: ``, 26 when the stamp has a year)."""
    indent = 26 if any(re.match(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} +\d{1,2} [\d:]{8} \d{4}: ", ln)
                       for ln in lines) else 21
    out: list[str] = []
    for ln in lines:
        if (out and len(ln) > indent and ln[:indent].strip() == "" and len(out[-1]) >= 70
                and not out[-1].startswith(" ")):
            out[-1] = out[-1] + ln[indent:]
        else:
            out.append(ln)
    return out


def _field(text: str, key: str) -> str | None:
    # wrapping may have eaten the space before "<"
    m = re.search(re.escape(key) + r" ?<(?P<v>[^>]*)>", text)
    return m.group("v") if m else None


def _own_field(head: str, key: str) -> str | None:
    """A field that follows the free-text job name in a ``bjobs -l`` head: read only as a
    field of its own (", User <...", never "xUser <bob" inside a name), and only when the
    head has it once; a name such as "x>, Project <bob" cannot be told from the real one."""
    starts = [m.end() for m in re.finditer(r",\s?" + re.escape(key) + r" ?<", head)]
    if len(starts) != 1:
        return None
    end = head.find(">", starts[0])
    return head[starts[0]:end] if end >= 0 else None


def _command_of(head: str) -> str | None:
    i = head.find("Command <")
    if i < 0:
        return None
    rest = head[i + len("Command <"):]
    # The command may contain '<' and '>'; it ends at the last '>' before a known trailing
    # field or the end of the line.
    m = re.search(r">(?:,\s*(?:Share group charged|Esub|Job Description|Job Priority|"
                  r"Application|Interactive|APS Priority)\b.*)?$", rest)
    return rest[:m.start()] if m else rest.rstrip(">")


def _mem_mb(value: str, unit: str) -> int:
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit.upper()[0]]
    return int(round(float(value) * factor))


def parse_bjobs_long(text: str, now: datetime, tz: tzinfo = UTC) -> tuple[list[JobDetail], list[str]]:
    """``bjobs -l [ids]``: the details of each job, and the ids reported not found."""
    failure = scheduler_failure(text)
    if failure:
        raise failure
    blocks: list[list[str]] = []
    not_found: list[str] = []
    for line in text.splitlines():
        m = _JOB_NOT_FOUND.fullmatch(line.strip()) or _ILLEGAL_ID.fullmatch(line.strip())
        if m:
            not_found.append(m.group("id"))
            continue
        if _JOB_HEAD.match(line):
            blocks.append([line])
        elif _SEPARATOR.match(line):
            continue
        elif blocks:
            blocks[-1].append(line)
        elif line.strip() and not _NO_JOBS.match(line.strip()):
            raise refused("bjobs -l", line)
    return [_detail(b, now, tz) for b in blocks], not_found


def _detail(block: list[str], now: datetime, tz: tzinfo) -> JobDetail:
    lines = _unwrap(block)
    head = lines[0]
    d = JobDetail(job_id=_JOB_HEAD.match(head).group("id"))
    d.name = _field(head, "Job Name")
    # The project is the owner under run_as: service; a field faked by the name is left
    # unknown (no owner: only administrators see the job).
    d.user, d.project, d.status, d.queue = (_own_field(head, key) for key in ("User", "Project", "Status", "Queue"))
    d.command = _command_of(head)
    section = None
    limit_name = None
    for ln in lines[1:]:
        m = _STAMP.match(ln)
        if m:
            section = None
            try:
                ts = parse_time(m.group("ts"), now, tz)
            except ValueError:
                raise refused("bjobs -l", ln) from None
            body = ln[m.end():]
            _event(d, ts, body)
            continue
        s = ln.strip()
        if not s:
            section = None if section != "limit" else section
            continue
        if s.startswith("PENDING REASONS:"):
            section = "pending"
            continue
        if s.startswith("SUSPENDING REASONS:"):
            section = "suspending"
            continue
        if re.fullmatch(r"(RUNLIMIT|MEMLIMIT|CPULIMIT|PROCLIMIT|SWAPLIMIT|PROCESSLIMIT|"
                        r"FILELIMIT|DATALIMIT|STACKLIMIT|CORELIMIT|THREADLIMIT)(\s+\w+)*", s):
            section = "limit"
            limit_name = s.split()
            continue
        if s.endswith(":") and s.isupper():
            section = "other"
            continue
        if section == "pending":
            d.pending_reasons.append(s.rstrip(";"))
        elif section == "suspending":
            d.suspend_reason = (d.suspend_reason + "; " if d.suspend_reason else "") + s.rstrip(";")
        elif section == "limit" and limit_name:
            vals = s.split()
            _limits(d, limit_name, vals)
            section, limit_name = None, None
    if d.signal is not None and d.exit_code is None:
        d.exit_code = 128 + d.signal
    return d


def _limits(d: JobDetail, names: list[str], vals: list[str]) -> None:
    # " RUNLIMIT\n 480.0 min of a6122" / " MEMLIMIT\n    120 G" / "  102400 K"
    text = " ".join(vals)
    for name in names:
        if name == "RUNLIMIT":
            if re.match(r"[\d.]+\s*min", text):
                d.run_limit_minutes = run_limit_minutes(text)
        elif name == "MEMLIMIT":
            m = re.search(r"([\d.]+)\s*([KMGT])", text)
            if m:
                d.mem_limit_mb = _mem_mb(m.group(1), m.group(2))


def _event(d: JobDetail, ts: datetime | None, body: str) -> None:
    if body.startswith("Submitted from host"):
        d.submit_time = ts
        d.cwd = _field(body, "CWD")
        d.output_file = _field(body, "Output File")
        d.error_file = _field(body, "Error File")
        d.resources = _field(body, "Requested Resources")
        m = re.search(r"(\d+) (?:Processors Requested|Task\(s\))", body)
        if m:
            d.processors = int(m.group(1))
        if d.queue is None:
            d.queue = _field(body, "to Queue")
        return
    if body.startswith("Started") or body.startswith("Dispatched"):
        if body.startswith("Started") or d.start_time is None:
            d.start_time = ts
        hosts_txt = None
        m = re.search(r"(?:Started|Dispatched)(?: \d+ Task\(s\))? on(?: Host\(s\)| \d+ Hosts/Processors)?"
                      r" (?P<h>(?:<[^>]*>\s*)+)", body)
        if m:
            hosts_txt = " ".join(re.findall(r"<([^>]*)>", m.group("h")))
        if hosts_txt:
            d.hosts = _hosts_of(hosts_txt)
        d.exec_home = _field(body, "Execution Home") or d.exec_home
        d.exec_cwd = _field(body, "Execution CWD") or d.exec_cwd
        return
    if body.startswith("Running with execution home"):
        d.exec_home = _field(body, "execution home") or d.exec_home
        d.exec_cwd = _field(body, "Execution CWD") or d.exec_cwd
        return
    if body.startswith("Done successfully"):
        d.end_time = ts
        d.exit_code = 0
        return
    m = re.match(r"Exited(?: with exit code (?P<code>\d+)| by signal (?P<sig>\d+))?", body)
    if m:
        d.end_time = ts
        if m.group("code"):
            d.exit_code = int(m.group("code"))
        if m.group("sig"):
            d.signal = int(m.group("sig"))
        return
    m = re.match(r"Completed <(?:exit|done)>[;.]?\s*(?P<term>TERM_\w+)?", body)
    if m:
        if d.end_time is None:
            d.end_time = ts
        if m.group("term"):
            d.term_reason = body[m.start("term"):].strip().rstrip(".;")
            if m.group("term") in ("TERM_OWNER", "TERM_ADMIN", "TERM_FORCE_OWNER",
                                   "TERM_FORCE_ADMIN", "TERM_REQUEUE_OWNER",
                                   "TERM_REQUEUE_ADMIN"):
                d.killed = True
        return
    if body.startswith("Signal <KILL> requested") or re.match(r"Signal <\w+> requested by", body):
        if "<KILL>" in body:
            d.killed = True
        return
    if body.startswith("Suspended"):
        d.suspend_reason = body.rstrip(";.")
        return


# --------------------------------------------------------------------------- bhist -l

def parse_bhist_long(text: str, now: datetime, tz: tzinfo = UTC) -> dict[str, JobDetail]:
    """``bhist -l [ids]``: per job id, the events (a ``Signal <KILL> requested`` marks a kill)."""
    failure = scheduler_failure(text)
    if failure:
        raise failure
    if text.strip() in ("No matching job found", ""):
        return {}
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if _JOB_HEAD.match(line):
            blocks.append([line])
        elif blocks:
            if line.startswith("Summary of time"):
                blocks[-1].append("")
                blocks.append(["#summary"])
                continue
            blocks[-1].append(line)
    out: dict[str, JobDetail] = {}
    for b in blocks:
        if b[0] == "#summary":
            continue
        d = _detail(b, now, tz)
        out[d.job_id] = d
    return out


# --------------------------------------------------------------------------- bsub / csub

_SUBMITTED = re.compile(
    r"Job <?(?P<id>\d+)>? (?:is|has been) submitted to (?:the )?(?P<default>default )?"
    r"queue [<\[](?P<queue>[^>\]]+)[>\]]")
# Refusals caused by what the client asked for: 422, with the scheduler's words.
_INPUT_FAULTS = re.compile(
    r"No such queue|illegal option|invalid option|Usage:|No command is specified|"
    r"Bad (?:resource requirement|host name|job name|argument|time specification|"
    r"dependency|user|project)|Illegal|invalid (?:job name|dependency|value|resource)|"
    r"syntax error|too many processors|Too many processors|not a valid|"
    r"exceeds? (?:the )?queue|job name is too long|Bad argument|Unknown option|"
    r"requested more processors|Specified (?:host|queue)|Job array index (?:too large|error)|"
    # bsub -w naming a job the scheduler does not know: "999999: No matching job found."
    r"No matching job found", re.I)


def parse_submit(text: str) -> tuple[str, str | None]:
    """(job id, queue) from bsub/csub output; raises with the scheduler's words otherwise."""
    m = _SUBMITTED.search(text)
    failure = scheduler_failure(text)
    if m and not failure and "not submitted" not in text.lower():
        return m.group("id"), m.group("queue")
    if failure:
        raise failure
    msg = "\n".join(ln for ln in text.strip().splitlines() if ln.strip())
    if not msg:
        raise SchedulerRefused("the scheduler printed nothing: job not submitted")
    first = msg.splitlines()[0]
    if _INPUT_FAULTS.search(msg):
        # keep a usage text short: its first line says what was wrong
        return _raise(InvalidInput(first if "Usage:" in msg else msg))
    # "User permission denied. Job not submitted.", "short: User cannot use the queue. ..."
    if "permission denied" in msg.lower() or _QUEUE_USE.search(msg):
        return _raise(Forbidden(msg))
    return _raise(SchedulerRefused(msg))


def _raise(exc: GatewayError):
    raise exc


# --------------------------------------------------------------------------- job actions

_ACTION_OK = re.compile(r"Job <(?P<id>[^>]+)> is being (?P<what>terminated|stopped|resumed|"
                        r"requeued|signaled|signalled|killed|suspended|held|released)")
_ACTION_ERR = re.compile(r"^Job <(?P<id>[^>]+)>\s*:\s*(?P<msg>.+)$")
_CONFLICT_WORDS = re.compile(
    r"already finished|already been suspended|already suspended|not suspended|"
    r"not running|not started|has not started|not yet started|is pending|is not pending|"
    r"cannot be requeued|only .* can be requeued|Job has already|is not held|"
    r"not in (?:a )?(?:valid|proper) state|in DONE|in EXIT|is finished|already exited|"
    r"Operation not permitted in current|not yet dispatched|already running", re.I)


def parse_action(text: str, job_id: str) -> str:
    """Output of bkill/bstop/bresume/brequeue (and their c-names) for one job id.

    Returns the success line; raises NotFound, Conflict, Forbidden, InvalidInput,
    SchedulerUnavailable or SchedulerRefused with the scheduler's words otherwise.
    """
    failure = scheduler_failure(text)
    if failure:
        raise failure
    m = _ACTION_OK.search(text)
    if m:
        return m.group(0)
    _job_refusal(text, job_id)
    raise refused("job control", text)


def _job_refusal(text: str, job_id: str) -> None:
    """Raise for the first ``Job <id>: why`` line (NotFound, Forbidden, Conflict, else
    SchedulerRefused, with the scheduler's words) or ``x: Illegal job ID.``; else return."""
    for line in text.strip().splitlines():
        e = _ACTION_ERR.match(line.strip())
        if e:
            msg = e.group("msg").strip()
            full = line.strip()
            if "No matching job" in msg or "not found" in msg:
                raise NotFound(f"job {job_id} not found ({full})")
            if "permission denied" in msg.lower() or "not the owner" in msg.lower():
                raise Forbidden(full)
            if _CONFLICT_WORDS.search(msg):
                raise Conflict(full)
            raise SchedulerRefused(full)
        if re.search(r"Illegal job ID", line):
            raise NotFound(f"job {job_id} not found ({line.strip()})")


# --------------------------------------------------------------------------- changing a job

_MODIFY_OK = re.compile(r"Parameters of job <(?P<id>[^>]+)> are being changed")
# bmod (OpenLava's sub_perror): "5: No matching job found. Job not modified.",
# "Job has already finished. Job not modified.", "nosuch: No such queue. Job not modified."
_NOT_MODIFIED = re.compile(r"\.?\s*Job not modified\.?\s*$", re.I)
_BAD_QUEUE = re.compile(r"No such queue", re.I)
# LSBE_QUEUE_USE ("short: User cannot use the queue"): the queue's users exclude the caller,
# as Slurm's "not permitted to use this partition" (403 there too).
_QUEUE_USE = re.compile(r"cannot use the queue|not allowed to use", re.I)
# LSBE_JOB_ARRAY: OpenLava's bmod moves no job array ("Options -q and -O cannot be applied
# on job array"): what was asked, not the job's state.
_ARRAY_QUEUE = re.compile(r"-q\b.*cannot be applied on job array", re.I)
_QUEUE_CLOSED = re.compile(r"Queue has been closed|not accepting", re.I)
_BAD_NAME = re.compile(r"Bad job name|Change job name is not allowed|job name is too long", re.I)
_BAD_LIMIT = re.compile(r"RUNLIMIT|run ?limit|Cannot exceed queue's hard limit", re.I)
# A running job's name or queue cannot change (OpenLava/LSF bmod, LSB_MOD_ALL_JOBS=Y or not).
_NOT_NOW = re.compile(r"Only the following parameters can be used to modify a running job|"
                      r"cannot be changed now|Cannot operate on job array|cannot be applied on job array",
                      re.I)


def _change_refusal(text: str, job_id: str) -> GatewayError:
    """The error for a refused bmod, keeping the scheduler's words."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    msg = "\n".join(lines)
    why = _NOT_MODIFIED.sub("", msg)
    if re.search(r"No matching job|is not found|Illegal job ID", why):
        return NotFound(f"job {job_id} not found ({msg})")
    if _BAD_QUEUE.search(why) or _ARRAY_QUEUE.search(why):
        return InvalidInput(msg, errors={"queue": [why]})
    if _BAD_NAME.search(why):
        return InvalidInput(msg, errors={"name": [why]})
    if ("permission denied" in why.lower() or "not the owner" in why.lower()
            or _QUEUE_USE.search(why)):
        return Forbidden(msg)
    if _QUEUE_CLOSED.search(why) or _NOT_NOW.search(why) or _CONFLICT_WORDS.search(why):
        return Conflict(msg)
    if _BAD_LIMIT.search(why):
        return InvalidInput(msg, errors={"timeLimitMinutes": [why]})
    return SchedulerRefused(msg)


def parse_modify(text: str, job_id: str) -> str:
    """``bmod [-q queue] [-J name] [-W minutes] <id>``: ``Parameters of job <5> are being
    changed``; raises NotFound, Conflict (finished, started, closed queue), Forbidden (not
    the caller's job, or a queue the caller may not use), InvalidInput (no such queue or an
    array's queue: errors["queue"]; a bad name: errors["name"]; a run limit the queue
    refuses: errors["timeLimitMinutes"]), SchedulerUnavailable or SchedulerRefused, with
    the scheduler's words."""
    failure = scheduler_failure(text)
    if failure:
        raise failure
    m = _MODIFY_OK.search(text)
    if m:
        return m.group(0)
    if not text.strip():
        raise refused("bmod", text)
    raise _change_refusal(text, job_id)


# --------------------------------------------------------------------------- output

_PEEK_OUT = "<< output from stdout >>\n"
_PEEK_ERR = "<< output from stderr >>\n"


def parse_bpeek(data: bytes) -> tuple[bytes, bytes] | None:
    """(stdout, stderr) of a running job from bpeek; None when bpeek printed no sections
    (e.g. ``Job <5> : Not yet started.``).

    bpeek prints its section titles through stdio while ``cat`` writes the file straight to
    the pipe, so when stdout is not a terminal the stdout text may come *before* the titles
    (seen on OpenLava 2.2 when the job has a separate error file).
    """
    o, e = _PEEK_OUT.encode(), _PEEK_ERR.encode()
    both = o + b"\n" + e
    if data.startswith(o):
        rest = data[len(o):]
        i = rest.find(b"\n" + e)
        if i < 0:
            return rest, b""
        return rest[:i], rest[i + 1 + len(e):]
    i = data.find(both)
    if i >= 0:
        return data[:i], data[i + len(both):]
    if data.startswith(e):
        return b"", data[len(e):]
    if data.startswith(b"\n" + e):
        return b"", data[1 + len(e):]
    return None


_REPORT_HEAD = b"Sender: LSF System <"
_REPORT_FOLLOWS = b"The output (if any) follows:\n\n"
_REPORT_TAIL = re.compile(rb"\n?-{60}\n\nSender: LSF System <[^\n]*\nSubject: Job [^\n]*\n", re.S)
_PS_MARKER = b"\n\nPS:\n\nRead file <"


def strip_job_report(data: bytes) -> bytes:
    """The job's own output from an ``-o`` file: LSF wraps it in a mail-style report.

    OpenLava/AIP write the report first and the output after ``The output (if any)
    follows:``, and drop a ``PS: Read file <x.err> ...`` note after it; with
    ``LSB_STDOUT_DIRECT=Y`` LSF writes the output first and appends the report. -o appends:
    a file reused by an earlier job (ids wrap) holds several reports, and the last counts.
    A file without a report is returned unchanged; one whose report is still being written
    (no output section yet) gives nothing. :func:`job_report_bounds` with the whole file as
    both windows.
    """
    start, end = job_report_bounds(data, data, len(data))
    return data[start:end]


def job_report_bounds(head: bytes, tail: bytes, size: int, body_start: int | None = None
                      ) -> tuple[int, int]:
    """Where the job's own output lies in an ``-o`` file of ``size`` bytes known only by its
    first (``head``) and last (``tail``) bytes: (start, end), as :func:`strip_job_report`
    would cut the whole file. ``body_start``: where the last report's output begins, found
    on the cluster (a reused file's last report may lie between the windows); without it the
    last report seen in either window counts."""
    tail_at = size - len(tail)
    if head.startswith(_REPORT_HEAD):
        if body_start is not None:
            start = body_start
        else:
            k = tail.rfind(b"\n" + _REPORT_HEAD)
            if k >= 0 or tail_at > len(head) and tail.startswith(_REPORT_HEAD):
                k = k + 1 if k >= 0 else 0
                found = tail.find(_REPORT_FOLLOWS, k)
                start = tail_at + found if found >= 0 else -1
            else:
                k = head.rfind(b"\n" + _REPORT_HEAD)
                start = head.find(_REPORT_FOLLOWS, k + 1 if k > 0 else 0)
            if start < 0:
                return 0, 0         # report still being written, or no output section
            start += len(_REPORT_FOLLOWS)
        j = tail.rfind(_PS_MARKER)
        end = tail_at + j if j >= 0 and tail_at + j >= start else size
        return start, end
    m = None
    for m in _REPORT_TAIL.finditer(tail):
        pass
    return 0, (tail_at + m.start() if m is not None else size)


REPORT_FOLLOWS_LEN = len(_REPORT_FOLLOWS)


def resolve_output_path(pattern: str | None, job_id: str, cwd: str | None,
                        home: str | None) -> str | None:
    """``-o``/``-e`` pattern as a path: ``%J`` -> id, ``%I`` -> index (0 outside arrays),
    relative paths against the job's CWD, ``$HOME`` and ``~`` against its home."""
    if not pattern:
        return None
    base, index = split_job_id(job_id) or (job_id, None)
    path = pattern.replace("%J", base).replace("%I", index or "0")
    if home:
        if path == "~" or path.startswith("~/"):
            path = home + path[1:]
        path = path.replace("$HOME", home)
        if cwd:
            cwd = cwd.replace("$HOME", home)
            if cwd == "~" or cwd.startswith("~/"):
                cwd = home + cwd[1:]
    if not path.startswith("/"):
        if cwd and cwd.startswith("/"):
            path = cwd.rstrip("/") + "/" + path
        elif home:
            path = home.rstrip("/") + "/" + path
        else:
            return None
    return path


# --------------------------------------------------------------------------- hosts, queues, users

def _table(text: str, what: str, first: str, required: set[str]) -> list[dict]:
    failure = scheduler_failure(text)
    if failure:
        raise failure
    rows: list[dict] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if header is None:
            names = [t.upper() for t in line.split()]
            if names[:1] == [first] and required <= set(names):
                header = names
                continue
            raise refused(what, line)
        toks = line.split()
        # Unknown trailing columns (AIP's gpu column) may be blank for some rows.
        n_req = max(i for i, n in enumerate(header) if n in required) + 1
        if len(toks) > len(header) or len(toks) < n_req:
            raise refused(what, line)
        rows.append(dict(zip(header, toks + [""] * (len(header) - len(toks)))))
    if header is None:
        raise refused(what, text)
    return rows


def _int(v: str | None) -> int | None:
    if v is None:
        return None
    v = v.strip()
    if v in ("", "-"):
        return None
    try:
        return int(float(v))
    except ValueError:
        return None


def host_state(native: str) -> tuple[str, str | None]:
    """bhosts STATUS -> (ok|closed|down|unknown, reason)."""
    s = native.strip()
    low = s.lower()
    if low == "ok":
        return "ok", None
    if low in ("unavail", "unreach", "closed_lim", "unlicensed", "closed_cu_excl"):
        return "down", s
    if low.startswith("closed"):
        sub = s.split("_", 1)[1] if "_" in s else ""
        if sub in ("Full", "Busy", "Excl"):
            # busy with jobs or load, not closed by anyone: still in service
            return "ok", s
        return "closed", s
    return "unknown", s


def parse_bhosts(text: str) -> list[Host]:
    """``bhosts -w`` (``HOST_NAME STATUS JL/U MAX NJOBS RUN SSUSP USUSP RSV`` [+ extras])."""
    hosts = []
    for r in _table(text, "bhosts", "HOST_NAME", {"HOST_NAME", "STATUS", "MAX", "NJOBS", "RUN"}):
        state, reason = host_state(r["STATUS"])
        hosts.append(Host(
            name=r["HOST_NAME"], state=state, native_state=r["STATUS"], reason=reason,
            max_slots=_int(r.get("MAX")), cpus=_int(r.get("MAX")),
            njobs=_int(r.get("NJOBS")) or 0, running=_int(r.get("RUN")) or 0,
            suspended=(_int(r.get("SSUSP")) or 0) + (_int(r.get("USUSP")) or 0)))
    return hosts


_QSTATUS = re.compile(r"^(?P<open>Open|Closed)(?::(?P<act>Active|Inact\w*))?$", re.I)


def parse_bqueues(text: str, default_queues: list[str] | None = None) -> list[Queue]:
    """``bqueues`` (``QUEUE_NAME PRIO STATUS MAX JL/U JL/P JL/H NJOBS PEND RUN SUSP``)."""
    queues = []
    for r in _table(text, "bqueues", "QUEUE_NAME",
                    {"QUEUE_NAME", "STATUS", "NJOBS", "PEND", "RUN"}):
        m = _QSTATUS.match(r["STATUS"])
        if not m:
            raise refused("bqueues", " ".join(r.values()))
        queues.append(Queue(
            name=r["QUEUE_NAME"], open=m.group("open").lower() == "open",
            active=(m.group("act") or "Active").lower() == "active",
            native_state=r["STATUS"], priority=_int(r.get("PRIO")),
            is_default=r["QUEUE_NAME"] in (default_queues or []),
            max_slots=_int(r.get("MAX")), njobs=_int(r.get("NJOBS")) or 0,
            pending=_int(r.get("PEND")) or 0, running=_int(r.get("RUN")) or 0,
            suspended=_int(r.get("SUSP")) or 0))
    return queues


def parse_bqueues_run_limits(text: str, which: str = "maximum") -> dict[str, int | None]:
    """``bqueues -l [queue ...]``: each queue's hard run limit in minutes (None: none), or
    with ``which="default"`` its default one (what binds a job submitted without -W).

    OpenLava/LSF print a queue's limits as a row of names over a row of values, each in a
    column of 25 characters (`` RUNLIMIT`` over `` 360.0 min of hostA``); with default
    limits too, under ``DEFAULT LIMITS:`` first, then ``MAXIMUM LIMITS:``: the maximum
    is the one that binds."""
    failure = scheduler_failure(text)
    if failure:
        raise failure
    want_defaults = which == "default"
    limits: dict[str, int | None] = {}
    queue, defaults = None, False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^QUEUE:\s*(\S+)\s*$", line)
        if m:
            queue, defaults = m.group(1), False
            limits[queue] = None
            continue
        if queue is None:
            continue
        if line.startswith("DEFAULT LIMITS:"):
            defaults = True
        elif line.startswith("MAXIMUM LIMITS:"):
            defaults = False
        at = line.find(" RUNLIMIT")
        if at >= 0 and defaults == want_defaults and i + 1 < len(lines) and \
                re.fullmatch(r"(\s+[A-Z]+LIMIT)+\s*", line[at:] or ""):
            limits[queue] = run_limit_minutes(lines[i + 1][at:at + 25])
    return limits


def parse_busers(text: str) -> list[UserInfo]:
    """``busers all`` (``USER/GROUP JL/P MAX NJOBS PEND RUN SSUSP USUSP RSV``); the
    ``default`` row (limits only, no counts) is left out."""
    users = []
    for r in _table(text, "busers", "USER/GROUP", {"USER/GROUP", "NJOBS", "PEND", "RUN"}):
        if r.get("NJOBS") == "-":
            continue
        users.append(UserInfo(
            name=r["USER/GROUP"], njobs=_int(r.get("NJOBS")) or 0,
            pending=_int(r.get("PEND")) or 0, running=_int(r.get("RUN")) or 0,
            suspended=(_int(r.get("SSUSP")) or 0) + (_int(r.get("USUSP")) or 0),
            max_jobs=_int(r.get("MAX"))))
    return users


def parse_lsid(text: str) -> dict:
    """``lsid``: version (first line), cluster name, master name."""
    failure = scheduler_failure(text)
    if failure:
        raise failure
    cluster = re.search(r"My cluster name is (\S+)", text)
    master = re.search(r"My master name is (\S+)", text)
    if not cluster:
        raise refused("lsid", text)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), None)
    return {"version": first, "cluster": cluster.group(1),
            "master": master.group(1) if master else None}


def parse_bparams_default_queues(text: str) -> list[str]:
    """``bparams``: the ``Default Queues:`` line."""
    failure = scheduler_failure(text)
    if failure:
        raise failure
    m = re.search(r"^Default Queues:\s*(.*)$", text, re.M)
    if not m:
        raise refused("bparams", text)
    return m.group(1).split()


# --------------------------------------------------------------------------- badmin

def parse_badmin_host(text: str, host: str) -> str:
    """``badmin hopen|hclose HOST``: ``Close <vm> ...... done``."""
    failure = scheduler_failure(text)
    if failure:
        raise failure
    m = re.search(r"^(?:Open|Close) <(?P<h>[^>]+)> \.+ (?P<rest>.*)$", text, re.M)
    if m and m.group("rest").startswith("done"):
        return m.group(0).strip()
    if "Bad host name" in text or "No such host" in text or "Unknown host" in text:
        raise NotFound(f"host {host} not found ({text.strip()})")
    if "permission denied" in text.lower() or "not a cluster administrator" in text.lower():
        raise Forbidden(text.strip())
    if m:
        raise SchedulerRefused(m.group(0).strip())
    raise refused("badmin", text)


def parse_badmin_queue(text: str, queue: str) -> str:
    """``badmin qopen|qclose|qact|qinact QUEUE``: ``Queue <normal> is closed``."""
    failure = scheduler_failure(text)
    if failure:
        raise failure
    m = re.search(r"Queue <(?P<q>[^>]+)> is (?:opened|closed|activated|inactivated)", text)
    if m:
        return m.group(0)
    if "No such queue" in text:
        raise NotFound(f"queue {queue} not found ({text.strip()})")
    if "permission denied" in text.lower() or "not a cluster administrator" in text.lower():
        raise Forbidden(text.strip())
    if text.strip():
        raise SchedulerRefused(text.strip())
    raise refused("badmin", text)
