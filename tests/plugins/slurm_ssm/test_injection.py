"""Hostile strings in every field a client controls, through every transport, to the real
Slurm: none is ever interpreted by a shell (a sentinel file is never created), an accepted job
carries the string literally, and a refusal is a clean 422.

Fields: name, workDir, environment keys and values, nativeOptions (names and values),
command and scriptLocation (on the cluster and in S3). Jobs are submitted held and cancelled,
except the one that proves environment values arrive intact (it runs printenv).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from gateway.errors import InvalidInput
from gateway.models import JobQuery, JobSpec, JobState, User

from .conftest import SCRIPT_BUCKET, transport_options, wait_for

ALICE = User("gwalice")


def payloads(sentinel: str) -> list[str]:
    touch = f"touch {sentinel}"
    return [
        f"x; {touch}", f"$({touch})", f"`{touch}`", f"x\n{touch}", f"x\r\n{touch}\n",
        f"--wrap={touch}", f"-- {touch}", f"x' ; {touch} ; '", f'x" ; {touch} ; "',
        f"x && {touch} || {touch}", f"x | {touch}", f"x > {sentinel}", f"$'\\x41' {touch} \\",
        f"データ ü ${{IFS}}$({touch})", f"%j %x %% {touch}", f"x\t{touch} # ~ * ? [a] {{a,b}} !",
    ]


def slurm_jobs() -> dict:
    """Slurm's own records, by job id (squeue --json ignores -j in 22.05)."""
    out = subprocess.run(["squeue", "--json", "--states=all"], capture_output=True, timeout=30).stdout
    return {str(j["job_id"]): j for j in json.loads(out)["jobs"]}


def batch_script(job_id: str) -> str:
    return subprocess.run(["scontrol", "write", "batch_script", job_id, "-"], capture_output=True,
                          timeout=30, check=True).stdout.decode()


@pytest.fixture(params=["local", "ssh", "ssm"])
def plugin(request, make_plugin, s3):
    return make_plugin(transport=transport_options(request.param, request),
                       s3={"endpoint_url": s3.url, "region_name": s3.region,
                           "allow": [f"s3://{SCRIPT_BUCKET}/"]})


@pytest.fixture
def sentinel():
    path = f"/tmp/gw-sentinel-{uuid.uuid4().hex}"
    yield path
    assert not os.path.exists(path), "a hostile string was run by a shell"


@pytest.fixture
def held():
    """Submit held jobs; they are cancelled at the end (directly: cleanup is not under test)."""
    job_ids = []

    def submit(plugin, **kw):
        job_id = plugin.submit_job(user=ALICE, spec=JobSpec(hold=True, **kw))
        job_ids.append(job_id)
        return job_id

    yield submit
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


def test_names_work_dirs_and_option_values_are_carried_literally(plugin, sentinel, held):
    jobs = [(p, held(plugin, command="true", name=p), held(plugin, command="true", work_dir="/tmp/" + p),
             held(plugin, command="true", native_options=[f"--comment={p}"])) for p in payloads(sentinel)]
    ours = {j.job_id: j for j in plugin.list_jobs(user=ALICE, query=JobQuery(user=ALICE.name))}
    slurms = slurm_jobs()
    for p, by_name, by_dir, by_comment in jobs:
        assert ours[by_name].name == p and slurms[by_name]["name"] == p
        assert ours[by_dir].work_dir == "/tmp/" + p and slurms[by_dir]["current_working_directory"] == "/tmp/" + p
        assert slurms[by_comment]["comment"] == p


def test_commands_reach_the_batch_script_verbatim(plugin, sentinel, held):
    for p in payloads(sentinel):
        job_id = held(plugin, command=p)          # the job's own command line: held, never run
        script = batch_script(job_id)
        assert script.startswith("#!/bin/sh\n") and script.endswith(f"\n{p}\n"), script


def test_environment_values_arrive_intact_and_bad_keys_are_refused(plugin, sentinel):
    values = payloads(sentinel)
    env = {f"GW_V{i}": v for i, v in enumerate(values)}
    job_id = plugin.submit_job(user=ALICE, spec=JobSpec(
        command="printenv -0 " + " ".join(env), environment=env, name="env-injection"))
    job = wait_for(plugin, ALICE, job_id, {JobState.COMPLETED, JobState.FAILED})
    assert job.state is JobState.COMPLETED, job
    out = plugin.job_output(user=ALICE, job_id=job_id, stream="stdout", offset=0, limit=1 << 20).data
    assert out.split(b"\x00")[:-1] == [v.encode() for v in values]
    for p in values + ["A\x00B", "ü"]:
        with pytest.raises(InvalidInput) as e:
            plugin.submit_job(user=ALICE, spec=JobSpec(command="true", environment={p: "1"}))
        assert e.value.errors and "environment" in e.value.errors
    with pytest.raises(InvalidInput):
        plugin.submit_job(user=ALICE, spec=JobSpec(command="true", environment={"A": "x\x00" + sentinel}))


def test_native_options_outside_the_allow_list_are_refused(plugin, sentinel):
    for p in payloads(sentinel) + [f"--wrap=touch {sentinel}", f"--export=ALL,X=$(touch {sentinel})",
                                   f"--comment\x00={sentinel}", "--qos", "normal"]:
        opts = [p] if p != "--qos" else ["--qos", "normal"]
        with pytest.raises(InvalidInput) as e:
            plugin.submit_job(user=ALICE, spec=JobSpec(command="true", hold=True, native_options=opts))
        assert "nativeOptions" in e.value.errors


def test_script_locations_are_paths_never_commands(plugin, sentinel, s3, held):
    for p in payloads(sentinel):
        for location in ("/tmp/" + p, p, f"s3://{SCRIPT_BUCKET}/{p}"):
            with pytest.raises(InvalidInput) as e:
                plugin.submit_job(user=ALICE, spec=JobSpec(script_location=location, hold=True))
            assert e.value.msg
    with pytest.raises(InvalidInput):
        plugin.submit_job(user=ALICE, spec=JobSpec(script_location="/tmp/x\x00y"))
    # a real script whose path is hostile is still just a path
    top = f"/tmp/gw-inj-{uuid.uuid4().hex[:6]} $(touch "
    path = f"{top}{sentinel}); ü.sh"               # a directory "...$(touch /tmp", then the file
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\necho ran\n")
    try:
        job_id = held(plugin, script_location=path)
        assert slurm_jobs()[job_id]["command"] == path
    finally:
        shutil.rmtree(top)


def test_nul_in_any_string_field_is_a_clean_422(plugin, sentinel):
    bad = f"x\x00touch {sentinel}"
    for kw in ({"command": bad}, {"command": "true", "name": bad}, {"command": "true", "work_dir": "/" + bad},
               {"command": "true", "stdout": bad}, {"command": "true", "dependency": bad},
               {"script": "#!/bin/sh\n" + bad}):
        with pytest.raises(InvalidInput):
            plugin.submit_job(user=ALICE, spec=JobSpec(**kw))
