"""Request and response schemas of the jobs blueprint (JSON is camelCase, as in the seed)."""
from __future__ import annotations

import re

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, pre_load, validate, validates, validates_schema

from ...models import JOB_ACTIONS, OUTPUT_STREAMS, JobChange, JobSpec, JobState
from ..common import envelope, no_control_chars, no_nul

# These patterns also go into the OpenAPI document (ECMA regex, where $ is the end); Python's
# $ also matches before a final newline, so the fields add no_control_chars.
NAME_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]*$"
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
ARRAY_RE = r"^\d+(-\d+)?(:\d+)?(,\d+(-\d+)?(:\d+)?)*(%\d+)?$"
DEPENDENCY_RE = r"^(singleton|(after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)(:[0-9]{1,18}(_[0-9]{1,9})?(\+[0-9]{1,9})?)+)([,?](singleton|(after|afterany|afterok|afternotok|aftercorr|afterburstbuffer)(:[0-9]{1,18}(_[0-9]{1,9})?(\+[0-9]{1,9})?)+))*$"

MAX_PATH = 4096
MAX_SCRIPT = 1024 * 1024


class StrictBoolean(fields.Boolean):
    """true or false only: "yes", 1 or "false" are type errors, not guesses."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def _no_parent_refs(value: str) -> None:
    """As the files API: a path with a '..' segment is refused, not taken to where it leads
    (``~/../bob`` ran the job in bob's directory, whose files the files API then refused
    to open with jobId=)."""
    if ".." in value.split("/"):
        raise ValidationError("contains '..': give the path without parent-directory references")


def _path_field(description, **kw):
    return fields.String(validate=[validate.Length(min=1, max=MAX_PATH), no_control_chars, _no_parent_refs],
                         metadata={"description": description}, **kw)


# The fields a job is submitted with and may later change (JobSpecSchema, JobChangeSchema).
def _name_field(**kw):
    return fields.String(validate=[validate.Length(min=1, max=128), no_control_chars], **kw)


def _queue_field(**kw):
    return fields.String(validate=[validate.Length(min=1, max=64), validate.Regexp(NAME_RE, error="not a valid queue name"),
                                   no_control_chars], **kw)


def _time_limit_field(**kw):
    return fields.Integer(attribute="time_limit_minutes", validate=validate.Range(min=1, max=10 * 525600),
                          strict=True, **kw)


class JobSpecSchema(Schema):
    """A job to submit: exactly one of script, command, scriptLocation."""

    class Meta:
        unknown = RAISE      # a misspelt option must not be silently ignored

    script = fields.String(validate=[validate.Length(min=1, max=MAX_SCRIPT), no_nul],
                           metadata={"description": "the job script's text (starts with #!)"})
    command = fields.String(validate=[validate.Length(min=1, max=65536), no_nul],
                            metadata={"description": "a command line run as the job (by the job's shell, as you)"})
    scriptLocation = fields.String(attribute="script_location",
                                   validate=[validate.Length(min=1, max=MAX_PATH), no_control_chars, _no_parent_refs],
                                   metadata={"description": "a script file on the cluster (absolute path, or ~/... in "
                                                           "your directory there, as in the files API; read as the "
                                                           "user), or s3://bucket/key under a prefix the operator "
                                                           "allows for this user (else 403)"})
    name = _name_field()
    queue = _queue_field()
    nodes = fields.Integer(validate=validate.Range(min=1, max=100000), strict=True)
    cpus = fields.Integer(validate=validate.Range(min=1, max=10_000_000), strict=True,
                          metadata={"description": "tasks/slots"})
    cpusPerTask = fields.Integer(attribute="cpus_per_task", validate=validate.Range(min=1, max=100000), strict=True)
    memoryMB = fields.Integer(attribute="memory_mb", validate=validate.Range(min=1, max=1 << 40), strict=True)
    timeLimitMinutes = _time_limit_field()
    workDir = _path_field("working directory on the cluster (absolute, or ~ / ~/... for your directory "
                          "there, the files API's ~)", attribute="work_dir")
    environment = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=128)),
                              values=fields.String(validate=[validate.Length(max=32768), no_nul]),
                              metadata={"description": "extra environment variables"})
    stdout = _path_field("file for the job's standard output")
    stderr = _path_field("file for the job's standard error")
    array = fields.String(validate=[validate.Length(max=256), validate.Regexp(ARRAY_RE, error="not an array range like 1-100%10"), no_control_chars])
    dependency = fields.String(validate=[validate.Length(max=1024), validate.Regexp(
        DEPENDENCY_RE, error="not a dependency like afterok:123:124 or afterany:125"), no_control_chars])
    hold = StrictBoolean(metadata={"description": "submit held (release it later)"})
    nativeOptions = fields.List(fields.String(validate=[validate.Length(min=1, max=1024), no_nul]),
                                attribute="native_options", validate=validate.Length(max=64),
                                metadata={"description": "scheduler options as a list of arguments, checked against the backend's allow-list"})

    @validates("environment")
    def _env_keys(self, value, **_):
        bad = [k for k in value if not ENV_KEY_RE.match(k)]
        if bad:
            raise ValidationError(f"invalid environment variable name(s): {', '.join(map(repr, bad[:5]))}")
        if len(value) > 256:
            raise ValidationError("at most 256 environment variables")

    @validates_schema
    def _one_source(self, data, **_):
        given = [k for k in ("script", "command", "script_location") if data.get(k) is not None]
        if len(given) != 1:
            raise ValidationError("give exactly one of script, command or scriptLocation", "_schema")

    @post_load
    def _make(self, data, **_):
        return JobSpec(**data)


class JobChangeSchema(Schema):
    """What to change in a submitted job: one or more of name, queue, timeLimitMinutes."""

    class Meta:
        unknown = RAISE      # a field that cannot be changed must not be silently ignored

    error_messages = {"unknown": "cannot be changed: give name, queue or timeLimitMinutes "
                                 "(submit a new job for anything else)"}

    name = _name_field(metadata={"description": "the job's new name"})
    queue = _queue_field(metadata={"description": "move the job to this queue (only while it waits: PENDING or HELD)"})
    timeLimitMinutes = _time_limit_field(
        metadata={"description": "the new run-time limit; raising that of a started job needs an administrator"})

    @validates_schema
    def _something(self, data, **_):
        if not data:
            raise ValidationError("give at least one of name, queue or timeLimitMinutes", "_schema")

    @post_load
    def _make(self, data, **_):
        return JobChange(**data)


class JobSchema(Schema):
    jobId = fields.String(attribute="job_id", required=True)
    name = fields.String(allow_none=True)
    userName = fields.String(attribute="user_name", allow_none=True)
    queue = fields.String(allow_none=True)
    state = fields.Enum(JobState, by_value=True, required=True)
    nativeState = fields.String(attribute="native_state", allow_none=True)
    reason = fields.String(allow_none=True)
    exitCode = fields.Integer(attribute="exit_code", allow_none=True)
    submitTime = fields.DateTime(attribute="submit_time", allow_none=True)
    startTime = fields.DateTime(attribute="start_time", allow_none=True)
    endTime = fields.DateTime(attribute="end_time", allow_none=True)
    hosts = fields.List(fields.String())
    nodes = fields.Integer(allow_none=True)
    cpus = fields.Integer(allow_none=True)
    memoryMB = fields.Integer(attribute="memory_mb", allow_none=True)
    timeLimitMinutes = fields.Integer(attribute="time_limit_minutes", allow_none=True)
    workDir = fields.String(attribute="work_dir", allow_none=True)
    stdoutPath = fields.String(attribute="stdout_path", allow_none=True)
    stderrPath = fields.String(attribute="stderr_path", allow_none=True)
    command = fields.String(allow_none=True)


def _iso(value):
    return None if value is None else value.isoformat()


def _str(value):
    return None if value is None else str(value)


def _int(value):
    return None if value is None else int(value)


def job_json(job) -> dict:
    """``JobSchema().dump(job)`` written out: the list and detail answers are the gateway's
    hottest path, and marshmallow spends ~17-19 ms on 1000 jobs where this spends ~2-3 ms.
    JobSchema stays the documented contract; tests check that both give the same JSON
    (values coerced as marshmallow's String and Integer fields do, for any plugin's Jobs)."""
    state = job.state
    hosts = job.hosts
    return {
        "jobId": _str(job.job_id), "name": _str(job.name), "userName": _str(job.user_name),
        "queue": _str(job.queue), "state": None if state is None else state.value,
        "nativeState": _str(job.native_state), "reason": _str(job.reason),
        "exitCode": _int(job.exit_code), "submitTime": _iso(job.submit_time),
        "startTime": _iso(job.start_time), "endTime": _iso(job.end_time),
        "hosts": None if hosts is None else [str(h) for h in hosts], "nodes": _int(job.nodes),
        "cpus": _int(job.cpus), "memoryMB": _int(job.memory_mb),
        "timeLimitMinutes": _int(job.time_limit_minutes), "workDir": _str(job.work_dir),
        "stdoutPath": _str(job.stdout_path), "stderrPath": _str(job.stderr_path),
        "command": _str(job.command),
    }


class JobListQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    user = fields.String(validate=[validate.Length(min=1, max=64), validate.Regexp(NAME_RE), no_control_chars],
                         metadata={"description": "only this user's jobs; `all` for everyone's (admins)"})
    state = fields.List(fields.Enum(JobState, by_value=True),
                        metadata={"description": "one or more states (repeat the parameter or separate by commas)"})
    queue = fields.String(validate=[validate.Length(min=1, max=64), validate.Regexp(NAME_RE), no_control_chars])
    name = fields.String(validate=[validate.Length(min=1, max=128), no_control_chars])
    limit = fields.Integer(validate=validate.Range(min=1), metadata={
        "description": "page size: page_size (100 by default) when not given; more than "
                       "max_page_size (1000 by default) is cut to it"})
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))

    @pre_load
    def _states_by_commas(self, data, **_):
        """?state=RUNNING,PENDING as well as ?state=RUNNING&state=PENDING, in any case."""
        if "state" not in data:
            return data
        values = data["state"]
        values = [values] if isinstance(values, str) else list(values)
        out = {key: data[key] for key in data}
        out["state"] = [part.strip().upper() for value in values for part in str(value).split(",")]
        return out


class JobWaitQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    wait = fields.Float(load_default=0, validate=validate.Range(min=0),
                        metadata={"description": "long poll: answer when the state changes or after this many "
                                                 "seconds (at most max_wait_seconds, 60 by default; a user's polls "
                                                 "beyond max_waits_per_user answer within a second)"})
    since = fields.Enum(JobState, by_value=True,
                        metadata={"description": "the state the client last saw; answer at once if it differs"})


class OutputQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    stream = fields.String(load_default="stdout", validate=validate.OneOf(OUTPUT_STREAMS))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2 ** 62))
    limit = fields.Integer(load_default=65536, validate=validate.Range(min=1, max=16 * 1024 * 1024))


class JobIdSchema(Schema):
    jobId = fields.String(attribute="job_id", required=True)


class SubmitResultSchema(Schema):
    job = fields.Nested(JobIdSchema)


class JobResultSchema(Schema):
    job = fields.Nested(JobSchema)


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema))
    total = fields.Integer()
    offset = fields.Integer()
    limit = fields.Integer()


class OutputSchema(Schema):
    jobId = fields.String(attribute="job_id")
    stream = fields.String()
    offset = fields.Integer()
    nextOffset = fields.Integer(attribute="next_offset")
    size = fields.Integer(allow_none=True)
    data = fields.String(metadata={"description": "the bytes read, decoded as UTF-8 (invalid bytes replaced)"})


class OutputResultSchema(Schema):
    output = fields.Nested(OutputSchema)


class ActionResultSchema(Schema):
    job = fields.Nested(JobSchema)
    action = fields.String()


JOB_ACTION_RE = "|".join(JOB_ACTIONS)

SubmitEnvelope = envelope("SubmitEnvelope", SubmitResultSchema)
JobEnvelope = envelope("JobEnvelope", JobResultSchema)
JobListEnvelope = envelope("JobListEnvelope", JobListSchema)
OutputEnvelope = envelope("OutputEnvelope", OutputResultSchema)
ActionEnvelope = envelope("ActionEnvelope", ActionResultSchema)
