"""The hand-written job dump of the list and detail answers must be JobSchema's JSON exactly."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gateway.api.jobs.schemas import JobSchema, job_json
from gateway.models import Job, JobState

FIXTURES = Path(__file__).resolve().parents[1] / "plugins" / "slurm_ssm" / "fixtures"


def _jobs():
    from gateway_slurm_ssm import parse
    for name, parser in (("squeue_json", parse.parse_squeue_json), ("squeue_format", parse.parse_squeue_format)):
        for job, _ in parser(json.loads((FIXTURES / f"{name}.json").read_text())["stdout"]):
            yield job
    t = datetime(2026, 11, 22, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=8)))
    yield Job(job_id="1")                                             # every optional field empty
    yield Job(job_id="2_[1-3%2]", name="データ|;$(x)", user_name="u", queue="q", state=JobState.HELD,
              native_state="PENDING", reason="JobHeldUser", exit_code=-9, submit_time=t,
              start_time=t.replace(tzinfo=None), end_time=t.astimezone(timezone.utc), hosts=["n1", "n2"],
              nodes=2, cpus=0, memory_mb=10 ** 9, time_limit_minutes=0, work_dir="/w",
              stdout_path="/o %j", stderr_path="", command="")
    for state in JobState:
        yield Job(job_id="3", state=state)
    # a third-party plugin's loose types: coerced as marshmallow's fields do
    yield Job(job_id=42, state=None, hosts=None, exit_code="3", nodes=1.0, cpus=True, name=7)


def test_job_json_is_jobschema_dump():
    jobs = list(_jobs())
    assert len(jobs) > 35
    schema = JobSchema()
    for job in jobs:
        assert job_json(job) == schema.dump(job), job.job_id
        # and the same bytes once serialized, key order included
        assert json.dumps(job_json(job), sort_keys=True) == json.dumps(schema.dump(job), sort_keys=True)
    assert set(job_json(jobs[0])) == set(JobSchema().fields)          # no field forgotten either way

