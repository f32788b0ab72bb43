"""The plugin against the real single-node Slurm: jobs run as the user, every hook, the
snapshot shielding slurmctld, refusals in Slurm's words, and the controller going down."""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid

import pytest

from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound, SchedulerUnavailable
from gateway.models import JobQuery, JobSpec, JobState, User

from tests.cluster.slurm_cluster import slurmctld_stopped

from .conftest import SCRIPT_BUCKET, transport_options, wait_for

ALICE, BOB, ADMIN = User("gwalice"), User("gwbob"), User("gwadmin", is_admin=True)
FINAL = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}


def name():
    return f"it-{uuid.uuid4().hex[:8]}"


def squeue_owner(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%u"],
                         capture_output=True, text=True, timeout=30).stdout
    return out.strip()


def slurm_job_ids() -> list[str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i"],
                         capture_output=True, text=True, timeout=30).stdout
    return out.split()


def job_info_rpcs() -> int:
    out = subprocess.run(["sdiag"], capture_output=True, text=True, timeout=30).stdout
    return int(re.search(r"REQUEST_JOB_INFO\s+\(\s*\d+\)\s+count:(\d+)", out).group(1))


@pytest.mark.parametrize("kind", ["local", "ssh", "ssm"])
def test_jobs_run_as_the_user_who_submitted_them(make_plugin, request, kind):
    plugin = make_plugin(transport=transport_options(kind, request))
    script = "#!/bin/sh\necho \"I am $(id -un) in $PWD\"\n"
    ids = {user.name: plugin.submit_job(user=user, spec=JobSpec(script=script, name=name(), hold=True))
           for user in (ALICE, BOB)}
    for user_name, job_id in ids.items():
        assert squeue_owner(job_id) == user_name                # Slurm's own view
        assert plugin.get_job(user=ALICE, job_id=job_id).user_name == user_name
    for user, job_id in ((ALICE, ids["gwalice"]), (BOB, ids["gwbob"])):
        plugin.control_job(user=user, job_id=job_id, action="release")
        job = wait_for(plugin, user, job_id, FINAL)
        assert job.state is JobState.COMPLETED, job
        out = plugin.job_output(user=user, job_id=job_id, stream="stdout", offset=0, limit=4096).data.decode()
        assert out == f"I am {user.name} in /home/{user.name}\n"


@pytest.mark.parametrize("json_mode", ["yes", "no"])
def test_service_mode_runs_everything_as_the_service_account(make_plugin, json_mode):
    plugin = make_plugin(run_as="service", service_user="gwbob", json=json_mode)
    job_id = plugin.submit_job(user=ALICE, spec=JobSpec(command="id -un", name=name()))
    assert squeue_owner(job_id) == "gwbob"
    # ...and the job is the gateway user's: its comment says whose.
    comment = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%k"],
                             capture_output=True, text=True).stdout.strip()
    assert comment == "hpc-gateway:gwalice"
    assert plugin.get_job(user=ALICE, job_id=job_id).user_name == "gwalice"
    assert job_id in {j.job_id for j in plugin.list_jobs(user=ALICE, query=JobQuery(user="gwalice"))}
    job = wait_for(plugin, ALICE, job_id, FINAL)
    assert plugin.job_output(user=ALICE, job_id=job_id, stream="stdout", offset=0, limit=100).data == b"gwbob\n"
    # Users sharing the account do not share a directory: jobs start, and files live, in
    # <the account's home>/hpc-gateway/<user>.
    assert job.work_dir == "/home/gwbob/hpc-gateway/gwalice" and os.path.isdir(job.work_dir)
    assert plugin.file_transport(user=BOB)[1:] == ("gwbob", "/home/gwbob/hpc-gateway/gwbob")
    # The same tag on another account's job (submitted from a shell) gives it to nobody.
    forged = subprocess.run(["sudo", "-u", "gwalice", "sbatch", "--parsable", "--hold", "--chdir=/tmp",
                             "--comment=hpc-gateway:gwcarol", "--wrap=true"],
                            capture_output=True, text=True, check=True).stdout.strip()
    try:
        plugin.snapshot.invalidate()
        assert plugin.get_job(user=ALICE, job_id=forged).user_name == "gwalice"
    finally:
        subprocess.run(["scancel", forged], check=False)


def admin_comment(job_id: str) -> str:
    out = subprocess.run(["squeue", "--json", "--all", "--states=all"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return next(j["admin_comment"] for j in json.loads(out)["jobs"] if str(j["job_id"]) == job_id)


def test_owners_resume_what_they_suspended_not_what_an_operator_did(make_plugin):
    plugin = make_plugin()
    job_id = plugin.submit_job(user=ALICE, spec=JobSpec(command="sleep 120", name=name()))
    try:
        wait_for(plugin, ALICE, job_id, JobState.RUNNING)
        subprocess.run(["scontrol", "suspend", job_id], check=True)             # an operator
        wait_for(plugin, ALICE, job_id, JobState.SUSPENDED)
        with pytest.raises(Forbidden):
            plugin.control_job(user=ALICE, job_id=job_id, action="resume")
        assert wait_for(plugin, ALICE, job_id, JobState.SUSPENDED).state is JobState.SUSPENDED
        plugin.control_job(user=ADMIN, job_id=job_id, action="resume")
        wait_for(plugin, ALICE, job_id, JobState.RUNNING)
        # The owner's own suspension: marked for the operators to see, and hers to resume.
        plugin.control_job(user=ALICE, job_id=job_id, action="suspend")
        wait_for(plugin, ALICE, job_id, JobState.SUSPENDED)
        assert admin_comment(job_id).startswith("hpc-gateway:user-suspend@")
        subprocess.run(["sudo", "-u", "gwalice", "scontrol", "update", f"JobId={job_id}",
                        "AdminComment=hpc-gateway:user-suspend@1"], capture_output=True)
        assert admin_comment(job_id) != "hpc-gateway:user-suspend@1"             # operators only
        plugin.control_job(user=ALICE, job_id=job_id, action="resume")
        wait_for(plugin, ALICE, job_id, JobState.RUNNING)
        assert admin_comment(job_id) == ""
    finally:
        subprocess.run(["scancel", job_id], check=False)


def test_an_owner_suspends_an_array_with_pending_tasks(make_plugin):
    """scontrol suspend on the array id fails on its pending tasks (after suspending the
    running one): the plugin suspends and resumes the running tasks one by one."""
    plugin = make_plugin()
    job_id = plugin.submit_job(user=ALICE, spec=JobSpec(command="sleep 120", name=name(), array="1-3%1"))
    try:
        task = f"{job_id}_1"
        wait_for(plugin, ALICE, task, JobState.RUNNING)
        plugin.control_job(user=ALICE, job_id=job_id, action="suspend")
        assert wait_for(plugin, ALICE, task, JobState.SUSPENDED).state is JobState.SUSPENDED
        assert plugin.get_job(user=ALICE, job_id=f"{job_id}_3").state is JobState.PENDING
        plugin.control_job(user=ALICE, job_id=task, action="resume")
        wait_for(plugin, ALICE, task, JobState.RUNNING)
        plugin.control_job(user=ADMIN, job_id=job_id, action="suspend")        # the same for operators
        wait_for(plugin, ALICE, task, JobState.SUSPENDED)
        plugin.control_job(user=ADMIN, job_id=job_id, action="resume")
        wait_for(plugin, ALICE, task, JobState.RUNNING)
    finally:
        subprocess.run(["scancel", job_id], check=False)
        # Gone before the next test: a task still completing holds the node's CPUs, and a
        # job submitted meanwhile pends with reason Resources, not what it waits for.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and subprocess.run(
                ["squeue", "-h", "-j", job_id, "--states=PD,R,S,CG"], capture_output=True, text=True).stdout.strip():
            time.sleep(0.2)


@pytest.mark.parametrize("json_mode", ["yes", "no"])
def test_every_listed_het_job_component_can_be_asked_for(make_plugin, json_mode):
    plugin = make_plugin(json=json_mode)
    job_id = plugin.submit_job(user=ALICE, spec=JobSpec(
        script="#!/bin/sh\n#SBATCH hetjob\ntrue\n", name=name(), hold=True))
    try:
        listed = [j.job_id for j in plugin.list_jobs(user=ALICE, query=JobQuery(user="gwalice"))
                  if j.job_id == job_id or j.job_id == str(int(job_id) + 1)]
        assert sorted(listed) == [job_id, str(int(job_id) + 1)]
        for component in listed:
            assert plugin.get_job(user=ALICE, job_id=component).state is JobState.HELD
    finally:
        subprocess.run(["scancel", job_id], check=False)


def test_every_spec_field_reaches_slurm(make_plugin, tmp_path):
    plugin = make_plugin()
    work = f"/tmp/gw-it-{uuid.uuid4().hex[:6]}"
    subprocess.run(["sudo", "-u", "gwalice", "mkdir", work], check=True)
    job_id = plugin.submit_job(user=ALICE, spec=JobSpec(
        command='echo "A=$A B=$B"; echo err >&2', name="fields test, with comma", queue="batch",
        cpus=2, memory_mb=100, time_limit_minutes=7, work_dir=work, stdout="o-%j.txt", stderr="e-%x.txt",
        environment={"A": "x,y=z", "B": "two\nlines"}, native_options=["--comment=a b,c"]))
    job = wait_for(plugin, ALICE, job_id, FINAL)
    assert job.state is JobState.COMPLETED, job
    assert (job.name, job.queue, job.cpus, job.memory_mb, job.time_limit_minutes, job.work_dir) == (
        "fields test, with comma", "batch", 2, 100, 7, work)
    assert job.stdout_path == f"{work}/o-{job_id}.txt" and job.stderr_path == f"{work}/e-fields test, with comma.txt"
    assert plugin.job_output(user=ALICE, job_id=job_id, stream="stdout", offset=0, limit=100).data == b"A=x,y=z B=two\nlines\n"
    assert plugin.job_output(user=ALICE, job_id=job_id, stream="stderr", offset=0, limit=100).data == b"err\n"
    comment = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%k"],
                             capture_output=True, text=True).stdout.strip()
    assert comment == "a b,c"
    # no environment file is left behind
    assert not [f for f in os.listdir("/tmp") if f.startswith("hpc-gateway-env.")]


def test_script_location_on_the_cluster_and_in_s3(make_plugin, s3):
    plugin = make_plugin(s3={"endpoint_url": s3.url, "region_name": s3.region,
                             "allow": [f"s3://{SCRIPT_BUCKET}/{{user}}/"]})
    path = f"/tmp/gw-it-{uuid.uuid4().hex[:6]}.sh"
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\necho from-file $1\n")
    os.chmod(path, 0o755)
    job_id = plugin.submit_job(user=ALICE, spec=JobSpec(script_location=path, name=name()))
    job = wait_for(plugin, ALICE, job_id, FINAL)
    assert job.command == path
    assert plugin.job_output(user=ALICE, job_id=job_id, stream="stdout", offset=0, limit=100).data == b"from-file\n"

    s3.put(SCRIPT_BUCKET, "gwbob/hello.sh", b"#!/bin/sh\necho from-s3 $(id -un)\n")
    job_id = plugin.submit_job(user=BOB, spec=JobSpec(script_location=f"s3://{SCRIPT_BUCKET}/gwbob/hello.sh"))
    wait_for(plugin, BOB, job_id, FINAL)
    assert plugin.job_output(user=BOB, job_id=job_id, stream="stdout", offset=0, limit=100).data == b"from-s3 gwbob\n"
    with pytest.raises(InvalidInput) as e:
        plugin.submit_job(user=BOB, spec=JobSpec(script_location=f"s3://{SCRIPT_BUCKET}/gwbob/nope.sh"))
    assert "NoSuchKey" in e.value.msg
    # bob's script is not alice's to run, though the gateway's credentials could read it
    before = set(slurm_job_ids())
    for location in (f"s3://{SCRIPT_BUCKET}/gwbob/hello.sh", f"s3://{SCRIPT_BUCKET}/gwbob/../gwbob/hello.sh"):
        with pytest.raises((Forbidden, InvalidInput)):
            plugin.submit_job(user=ALICE, spec=JobSpec(script_location=location))
    assert set(slurm_job_ids()) == before


def test_arrays_and_dependencies(make_plugin):
    plugin = make_plugin()
    array_id = plugin.submit_job(user=ALICE, spec=JobSpec(
        script="#!/bin/sh\necho task $SLURM_ARRAY_TASK_ID\n", array="1-3", name=name(), hold=True))
    dep_id = plugin.submit_job(user=ALICE, spec=JobSpec(command="true", dependency=f"afterok:{array_id}", name=name()))
    assert plugin.get_job(user=ALICE, job_id=array_id).state is JobState.HELD
    dep = plugin.get_job(user=ALICE, job_id=dep_id)
    assert dep.state is JobState.PENDING and dep.reason == "Dependency"
    plugin.control_job(user=ALICE, job_id=array_id, action="release")
    job = wait_for(plugin, ALICE, array_id, FINAL)
    assert job.state is JobState.COMPLETED and job.exit_code == 0
    tasks = [j for j in plugin.list_jobs(user=ALICE, query=JobQuery(user="gwalice"))
             if j.job_id.startswith(f"{array_id}_")]
    assert sorted(j.job_id for j in tasks) == [f"{array_id}_{i}" for i in (1, 2, 3)]
    out = plugin.job_output(user=ALICE, job_id=f"{array_id}_2", stream="stdout", offset=0, limit=100)
    assert out.data == b"task 2\n" and out.path.endswith(f"slurm-{array_id}_2.out")
    assert wait_for(plugin, ALICE, dep_id, FINAL).state is JobState.COMPLETED


def test_control_actions_and_conflicts(make_plugin):
    plugin = make_plugin(admin_run_as=None)
    job_id = plugin.submit_job(user=ALICE, spec=JobSpec(command="sleep 120", name=name(), hold=True))
    with pytest.raises(Conflict):
        plugin.control_job(user=ALICE, job_id=job_id, action="resume")
    plugin.control_job(user=ALICE, job_id=job_id, action="release")
    wait_for(plugin, ALICE, job_id, JobState.RUNNING)
    with pytest.raises(Conflict) as e:
        plugin.control_job(user=ALICE, job_id=job_id, action="release")
    plugin.control_job(user=ALICE, job_id=job_id, action="suspend")   # operator-only in Slurm
    assert wait_for(plugin, ALICE, job_id, JobState.SUSPENDED).native_state == "SUSPENDED"
    plugin.control_job(user=ALICE, job_id=job_id, action="resume")
    wait_for(plugin, ALICE, job_id, JobState.RUNNING)
    plugin.control_job(user=ALICE, job_id=job_id, action="requeue")
    job = wait_for(plugin, ALICE, job_id, {JobState.PENDING, JobState.HELD, JobState.RUNNING})
    plugin.control_job(user=ADMIN, job_id=job_id, action="kill")     # an admin, run as the owner
    job = wait_for(plugin, ALICE, job_id, FINAL)
    assert job.state is JobState.CANCELLED and job.native_state == "CANCELLED"
    with pytest.raises(Conflict) as e:
        plugin.control_job(user=ALICE, job_id=job_id, action="kill")
    assert "CANCELLED" in e.value.msg
    with pytest.raises(NotFound):
        plugin.control_job(user=ALICE, job_id="999999", action="kill")


def test_slurms_refusals_verbatim(make_plugin):
    plugin = make_plugin()
    with pytest.raises(InvalidInput) as e:
        plugin.submit_job(user=ALICE, spec=JobSpec(command="true", queue="nosuch"))
    assert e.value.msg.startswith("sbatch: error: invalid partition specified: nosuch")
    with pytest.raises(InvalidInput) as e:
        plugin.submit_job(user=ALICE, spec=JobSpec(command="true", memory_mb=10 ** 6))
    assert "Memory specification can not be satisfied" in e.value.msg
    with pytest.raises(InvalidInput) as e:
        plugin.submit_job(user=ALICE, spec=JobSpec(script="echo no shebang\n"))
    assert "does not look like a batch script" in e.value.msg


def test_format_strings_and_json_agree_on_the_real_queue(make_plugin):
    by_json, by_format = make_plugin(json="yes"), make_plugin(json="no")
    plugin_jobs = {j.job_id: j for j in by_json.list_jobs(user=ALICE, query=JobQuery())}
    format_jobs = {j.job_id: j for j in by_format.list_jobs(user=ALICE, query=JobQuery())}
    common = set(plugin_jobs) & set(format_jobs)
    assert len(common) >= len(plugin_jobs) - 2          # a job may have changed in between
    for job_id in common:
        a, b = plugin_jobs[job_id], format_jobs[job_id]
        if a.native_state != b.native_state:
            continue
        for field in ("name", "user_name", "queue", "state", "reason", "hosts", "cpus", "work_dir",
                      "stdout_path", "submit_time"):
            assert getattr(a, field) == getattr(b, field), (job_id, field)
        if a.state is JobState.FAILED and b.exit_code is not None:
            assert a.exit_code == b.exit_code


def test_a_failed_jobs_own_text_cannot_give_it_another_exit_code(make_plugin):
    """Format path: squeue has no exit code, scontrol show job's text does, beside free text a
    user chose. Slurm 22.05 (mcs/none) keeps --mcs-label as given, before the real field."""
    plugin = make_plugin(json="no")
    honest = plugin.submit_job(user=ALICE, spec=JobSpec(command="exit 3", name=name()))
    forged = plugin.submit_job(user=ALICE, spec=JobSpec(
        command="exit 3", name="x ExitCode=0:0", native_options=["--mcs-label=y ExitCode=0:0"]))
    assert wait_for(plugin, ALICE, honest, FINAL).exit_code == 3
    job = wait_for(plugin, ALICE, forged, FINAL)
    assert job.state is JobState.FAILED and job.exit_code in (3, None), job


def test_hosts_queues_users_cluster_health(make_plugin):
    plugin = make_plugin()
    host = plugin.list_hosts()[0]
    assert host.cpus == 16 and host.state == "ok"
    try:
        plugin.control_host(user=ADMIN, host=host.name, action="close")
        closed = plugin.list_hosts()[0]
        assert closed.state == "closed" and "gwadmin" in closed.reason
    finally:
        plugin.control_host(user=ADMIN, host=host.name, action="open")
    assert plugin.list_hosts()[0].state == "ok"
    plugin.control_host(user=ADMIN, host=host.name, action="open")         # already open: fine
    try:
        plugin.control_queue(user=ADMIN, queue="batch", action="inactivate")
        batch = {q.name: q for q in plugin.list_queues()}["batch"]
        assert (batch.native_state, batch.open, batch.active) == ("DOWN", True, False)
        plugin.control_queue(user=ADMIN, queue="batch", action="close")
        batch = {q.name: q for q in plugin.list_queues()}["batch"]
        assert (batch.native_state, batch.open, batch.active) == ("INACTIVE", False, False)
    finally:
        plugin.control_queue(user=ADMIN, queue="batch", action="open")
        plugin.control_queue(user=ADMIN, queue="batch", action="activate")
    assert {q.name: q for q in plugin.list_queues()}["batch"].native_state == "UP"
    info = plugin.cluster_info()
    assert info.name == "gateway-test" and info.scheduler == "slurm" and info.cpus == 16 and info.queues == 2
    assert plugin.health().ok


def test_polling_clients_share_one_squeue_per_interval(make_plugin):
    plugin = make_plugin(snapshot_interval=1.0)
    job_id = plugin.submit_job(user=ALICE, spec=JobSpec(command="sleep 30", name=name()))
    plugin.get_job(user=ALICE, job_id=job_id)
    before = job_info_rpcs()
    stop = time.monotonic() + 3.0
    calls = []

    def poll():
        n = 0
        while time.monotonic() < stop:
            plugin.get_job(user=ALICE, job_id=job_id)
            plugin.list_jobs(user=ALICE, query=JobQuery(user="gwalice"))
            n += 2
        calls.append(n)

    threads = [threading.Thread(target=poll) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rpcs = job_info_rpcs() - before
    plugin.control_job(user=ALICE, job_id=job_id, action="kill")
    # thousands of calls, about one squeue per second (other tests' commands are not running)
    assert sum(calls) > 1000
    assert rpcs <= 6, rpcs


def test_controller_down_answers_503_quickly_after_the_first_failure(make_plugin):
    """Stops slurmctld for a moment (tests/cluster/slurm.sh up brings it back)."""
    plugin = make_plugin(snapshot_interval=0.2, command_timeout=15)
    plugin.list_jobs(user=ALICE, query=JobQuery())
    with slurmctld_stopped():
        assert not plugin.health().ok
        time.sleep(0.3)
        with pytest.raises(SchedulerUnavailable) as e:      # squeue's own retries: seconds
            plugin.list_jobs(user=ALICE, query=JobQuery())
        assert e.value.headers["Retry-After"]
        time.sleep(0.3)
        start = time.monotonic()
        with pytest.raises(SchedulerUnavailable) as e:      # then scontrol ping says DOWN at once
            plugin.get_job(user=ALICE, job_id="1")
        assert time.monotonic() - start < 2.0
        assert "DOWN" in e.value.msg
    time.sleep(0.3)
    assert plugin.health().ok
    plugin.list_jobs(user=ALICE, query=JobQuery())


def test_a_job_action_while_the_controller_is_down_is_503_not_slurms_unexpected_message(make_plugin):
    """22.05's scontrol says 'Unexpected message received' for a job action when slurmctld is
    down: with the job still in a fresh snapshot (nothing else has seen the outage), the
    action is a 503 with Retry-After, and nothing was done to the job."""
    plugin = make_plugin(snapshot_interval=600, command_timeout=30)
    job_id = plugin.submit_job(user=ALICE, spec=JobSpec(command="true", name=name(), hold=True))
    try:
        assert plugin.get_job(user=ALICE, job_id=job_id).state is JobState.HELD   # the snapshot has it
        with slurmctld_stopped():
            for action in ("release", "hold"):        # the first waits for scontrol (~9 s)
                with pytest.raises(SchedulerUnavailable) as e:
                    plugin.control_job(user=ALICE, job_id=job_id, action=action)
                assert e.value.headers["Retry-After"]
                assert "DOWN" in e.value.msg, e.value.msg
        plugin.snapshot.invalidate()
        assert plugin.get_job(user=ALICE, job_id=job_id).state is JobState.HELD            # not released
    finally:
        subprocess.run(["scancel", job_id], check=False)


@pytest.mark.parametrize("kind", ["local", "ssm"])
def test_read_user_file_as_the_user(make_plugin, request, kind):
    """Over SSM the file (a vis session: a VNC password) comes back through S3, not in the
    command's output, which SSM keeps."""
    plugin = make_plugin(transport=transport_options(kind, request))
    ssm_double = request.getfixturevalue("ssm_double") if kind == "ssm" else None
    earlier = set(ssm_double.invocations) if ssm_double else set()
    name = f".gw-it-{uuid.uuid4().hex[:6]}"
    subprocess.run(["sudo", "-u", "gwbob", "sh", "-c", f"umask 077; printf secret > ~/{name}"], check=True)
    try:
        assert plugin.read_user_file(user=BOB, path=f"~/{name}", limit=3) == b"sec"
        with pytest.raises(Forbidden):          # 0600, bob's: alice may not read it
            plugin.read_user_file(user=ALICE, path=f"/home/gwbob/{name}", limit=10)
        assert plugin.read_user_file(user=BOB, path="~/.no-such-file", limit=10) is None
        if ssm_double:
            kept = [inv.stdout for key, inv in ssm_double.invocations.items() if key not in earlier]
            # The three reads went through S3; "c2Vj" is base64 for "sec" (in a frame, "sec"
            # is where a base64 block starts).
            assert sum(out.startswith(b"GW-SSM-PUT 0") for out in kept) == 3, kept
            assert not [out for out in kept if b"c2Vj" in out]
    finally:
        os.unlink(f"/home/gwbob/{name}")
