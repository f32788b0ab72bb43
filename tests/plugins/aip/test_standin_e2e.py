"""The AIP plugin's hooks, called directly, against the LSF/AIP stand-in (tests/standins/lsf):
what the behaviour suite does not reach — arrays, AIP's c-commands without requeue/badmin,
csub's exit-0 authentication failure, daemons down, service mode, limits, running output."""
from __future__ import annotations

import os
import re
import time

import pytest

from gateway.errors import (ConfigError, Conflict, Forbidden, InvalidInput, NotFound, NotImplementedByPlugin,
                            SchedulerRefused, SchedulerTimeout, SchedulerUnavailable)
from gateway.models import JobQuery, JobSpec, JobState, User
from gateway_aip import make_scheduler
from tests.helpers import require
from tests.standins.lsf import lsf_standin
from tests.support.remote_fixtures import s3  # noqa: F401  (fixture)

ROOT = os.geteuid() == 0
ALICE, BOB, ADMIN = User("gwalice"), User("gwbob"), User("gwadmin", is_admin=True)
SCRIPT_BUCKET = "gw-aip-test-scripts"


@pytest.fixture(scope="session")
def s3_buckets():
    return [SCRIPT_BUCKET]


@pytest.fixture(scope="module")
def cluster():
    with lsf_standin(admins=("gwadmin",), slots=4) as c:
        yield c


def plugin(cluster, **options):
    base = {"env_file": str(cluster.env_file), "run_as": "sudo" if ROOT else "service",
            "cache_seconds": 0, "timeout": 20}
    if not ROOT:                 # a developer's run: one account for the gateway and the jobs
        base["allow_gateway_account"] = True
    base.update(options)
    return make_scheduler(base)


@pytest.fixture
def b(cluster):
    s = plugin(cluster, listing="json")
    yield s
    s.close()


def wait(s, job_id, states, user=ALICE, timeout=30):
    states = {states} if isinstance(states, JobState) else set(states)
    deadline = time.monotonic() + timeout
    while True:
        job = s.get_job(user=user, job_id=job_id)
        if job.state in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.state} ({job.reason})")
        time.sleep(0.1)


def test_array_elements_are_jobs_and_the_array_is_their_sum(b):
    jid = b.submit_job(user=ALICE, spec=JobSpec(command='echo "idx $LSB_JOBINDEX"', name="arr",
                                                array="1-3%2"))
    whole = wait(b, jid, JobState.COMPLETED)
    assert whole.native_state == "ARRAY" and whole.name == "arr" and whole.exit_code == 0
    listed = {j.job_id: j for j in b.list_jobs(user=ALICE, query=JobQuery(name="arr"))}
    assert {f"{jid}[{i}]" for i in (1, 2, 3)} <= set(listed)
    assert listed[f"{jid}[2]"].name == "arr[2]"
    out = b.job_output(user=ALICE, job_id=f"{jid}[2]", stream="stdout", offset=0, limit=100)
    assert out.data == b"idx 2\n" and out.path.endswith(f"lsf-{jid}_2.out")
    with pytest.raises(InvalidInput):
        b.job_output(user=ALICE, job_id=jid, stream="stdout", offset=0, limit=100)


def test_running_output_comes_from_bpeek(b):
    jid = b.submit_job(user=ALICE, spec=JobSpec(command="echo started; echo oops >&2; sleep 30"))
    wait(b, jid, JobState.RUNNING)
    deadline = time.monotonic() + 10
    while True:
        out = b.job_output(user=ALICE, job_id=jid, stream="stdout", offset=0, limit=100)
        err = b.job_output(user=ALICE, job_id=jid, stream="stderr", offset=0, limit=100)
        if out.data and err.data or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out.data == b"started\n" and err.data == b"oops\n"
    assert b.job_output(user=ALICE, job_id=jid, stream="stdout", offset=3, limit=2).data == b"rt"
    b.control_job(user=ALICE, job_id=jid, action="kill")
    assert wait(b, jid, {JobState.CANCELLED, JobState.FAILED}).state is JobState.CANCELLED


def test_a_running_jobs_output_is_read_up_to_max_output_bytes(cluster):
    """bpeek prints all a job has written: 3 MB here, with max_output_bytes 1 MiB. At most
    that (and bpeek's section titles) reach the gateway; it was all of it."""
    s = plugin(cluster, listing="json", max_output_bytes=1 << 20)
    as_users, run = [], s.transport.run

    def recording(argv, **kw):
        if kw.get("as_user"):
            as_users.append(list(argv))
        return run(argv, **kw)
    s.transport.run = recording
    try:
        jid = s.submit_job(user=ALICE, spec=JobSpec(
            command="head -c 3000000 /dev/zero | tr '\\0' x; echo; sleep 30"))
        wait(s, jid, JobState.RUNNING)
        deadline = time.monotonic() + 10
        while True:
            out = s.job_output(user=ALICE, job_id=jid, stream="stdout", offset=0, limit=4 << 20)
            if len(out.data) >= 1 << 20 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (1 << 20) <= len(out.data) <= (1 << 20) + 4096 and set(out.data) == {ord("x")}
        assert out.size == len(out.data)
        # What runs as a user starts with one of the commands docs/aip.md's sudoers allows.
        if ROOT:
            assert as_users and {argv[0] for argv in as_users} <= {"env", "head"}, as_users
        s.control_job(user=ALICE, job_id=jid, action="kill")
    finally:
        s.close()


def test_a_large_finished_output_is_read_by_ranges_to_its_last_byte(cluster):
    """3.4 MB of output, max_output_bytes 1 MiB: each read takes the file's first and last
    512 KiB (where LSF's report is) and the range asked for, never the whole file, and every
    byte can be reached (reads used to stop at max_output_bytes)."""
    s = plugin(cluster, listing="json", max_output_bytes=1 << 20)
    sizes, run = [], s.transport.run

    def recording(argv, **kw):
        res = run(argv, **kw)
        if "dd" in argv or "sh" in argv:           # reading the output file
            sizes.append(len(res.stdout))
        return res
    s.transport.run = recording
    try:
        jid = s.submit_job(user=ALICE, spec=JobSpec(command="seq 1 500000; echo oops >&2"))
        wait(s, jid, JobState.COMPLETED)
        expected = "".join(f"{i}\n" for i in range(1, 500001)).encode()
        for offset in (0, len(expected) // 2, (1 << 20) + 7, len(expected) - 100_000, len(expected) - 5):
            sizes.clear()
            out = s.job_output(user=ALICE, job_id=jid, stream="stdout", offset=offset, limit=65536)
            assert out.size == len(expected)
            assert out.data == expected[offset:offset + 65536], offset
            assert sum(sizes) <= (1 << 20) + 65536 + 64, sizes
        assert s.job_output(user=ALICE, job_id=jid, stream="stdout", offset=len(expected), limit=10).data == b""
        assert s.job_output(user=ALICE, job_id=jid, stream="stderr", offset=0, limit=100).data == b"oops\n"
    finally:
        s.close()


def test_a_reused_output_file_gives_the_last_jobs_output_whatever_its_size(cluster):
    """-o appends: two jobs writing to one file leave two reports, the second's in the middle
    of a file much larger than the windows read. The last report is found on the cluster
    (grep, once per job) and only the second job's output comes back."""
    s = plugin(cluster, listing="json", max_output_bytes=1 << 20)
    scans, run = [], s.transport.run

    def recording(argv, **kw):
        if "sh" in argv and "-c" in argv:
            scans.append(argv[-1])
        return run(argv, **kw)
    s.transport.run = recording
    out = f"/tmp/gw-reused-{os.getpid()}-{time.monotonic_ns()}.out"
    try:
        first = s.submit_job(user=ALICE, spec=JobSpec(command="seq 1 300000", stdout=out))
        wait(s, first, JobState.COMPLETED)
        second = s.submit_job(user=ALICE, spec=JobSpec(command="seq 500001 800000", stdout=out))
        wait(s, second, JobState.COMPLETED)
        expected = "".join(f"{i}\n" for i in range(500001, 800001)).encode()
        for offset in (0, 700_000, len(expected) - 1000):
            got = s.job_output(user=ALICE, job_id=second, stream="stdout", offset=offset, limit=65536)
            assert got.size == len(expected) and got.data == expected[offset:offset + 65536], offset
        # grep once for the job: later reads give the size it was scanned at.
        assert scans[0] == "-" and len(set(scans[1:])) == 1 and scans[1].isdigit(), scans
    finally:
        s.close()
        if os.path.exists(out):
            os.unlink(out)


def test_a_file_that_grows_or_shrinks_is_scanned_again(cluster):
    """The last report's place is kept per (file, job) only while the file keeps its size:
    a requeued job (-o appends a second run's report under the same id), or a file cut and
    rewritten, is scanned again. Kept regardless, the first run's output came back."""
    from gateway.models import Job
    s = plugin(cluster, listing="json", max_output_bytes=4096)        # windows of 2 KiB
    head = (b"Sender: LSF System <lsfadmin@vm>\nSubject: Job 7: <x> Done\n\nresource usage\n\n"
            b"The output (if any) follows:\n\n")

    def run(tag: bytes) -> bytes:
        return b"".join(b"%s %d\n" % (tag, i) for i in range(800))
    path = f"/tmp/gw-regrow-{os.getpid()}-{time.monotonic_ns()}.out"
    job = Job(job_id="7", user_name="gwalice", state=JobState.COMPLETED)
    try:
        for content, want in ((head + run(b"first"), run(b"first")),
                              (head + run(b"first") + head + run(b"second"), run(b"second")),
                              (head + run(b"x") + head + run(b"third"), run(b"third"))):
            with open(path, "wb") as fh:
                fh.write(content)
            os.chmod(path, 0o644)
            for offset in (0, len(want) // 2, len(want) - 100):
                data, size = s._read_output(ALICE, job, path, offset, 100, report=True)
                assert (data, size) == (want[offset:offset + 100], len(want)), (content[-20:], offset)
    finally:
        s.close()
        os.unlink(path)


def test_a_dependency_on_no_job_is_the_clients_input(b):
    """bsub -w naming a job LSF does not know: "999999: No matching job found. Job not
    submitted." is a 422, not a 502. (Slurm 22.05 accepts such a dependency and runs the job
    at once, as the mock does.)"""
    with pytest.raises(InvalidInput, match="No matching job found"):
        b.submit_job(user=ALICE, spec=JobSpec(command="true", dependency="afterok:999999"))


def test_a_kill_is_recognized_by_another_gateway_from_the_history(cluster, b):
    jid = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 60"))
    wait(b, jid, JobState.RUNNING)
    b.control_job(user=ALICE, job_id=jid, action="kill")
    other = plugin(cluster, listing="wide")        # knows nothing of the kill
    try:
        job = wait(other, jid, {JobState.CANCELLED, JobState.FAILED})
        assert job.state is JobState.CANCELLED and job.native_state == "EXIT"
        assert [j.state for j in other.list_jobs(user=ALICE, query=JobQuery()) if j.job_id == jid] == \
            [JobState.CANCELLED]
    finally:
        other.close()


def test_a_failing_job_is_failed_not_cancelled(b):
    jid = b.submit_job(user=ALICE, spec=JobSpec(script="#!/bin/sh\nexit 7\n"))
    job = wait(b, jid, {JobState.FAILED, JobState.CANCELLED})
    assert (job.state, job.exit_code) == (JobState.FAILED, 7)


def test_limits_and_details_come_back(b):
    jid = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 30", memory_mb=1024, time_limit_minutes=5,
                                                cpus=2, work_dir="/tmp", hold=True, name="lim"))
    job = b.get_job(user=ALICE, job_id=jid)
    assert (job.state, job.native_state) == (JobState.HELD, "PSUSP")
    assert (job.memory_mb, job.time_limit_minutes, job.cpus, job.work_dir) == (1024, 5, 2, "/tmp")
    assert job.stdout_path == f"/tmp/lsf-{jid}.out" and job.command == "sleep 30"
    assert "suspended by the user while pending" in job.reason
    b.control_job(user=ALICE, job_id=jid, action="kill")


def test_script_location_is_read_as_the_user(b, tmp_path):
    path = f"/tmp/gw-aip-script-{os.getpid()}.sh"
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\n#BSUB -J from-file\necho from the file\n")
    os.chmod(path, 0o644)
    try:
        jid = b.submit_job(user=ALICE, spec=JobSpec(script_location=path))
        job = wait(b, jid, JobState.COMPLETED)
        assert job.name == "from-file"
        assert b.job_output(user=ALICE, job_id=jid, stream="stdout", offset=0, limit=100).data == b"from the file\n"
    finally:
        os.unlink(path)
    with pytest.raises(InvalidInput):
        b.submit_job(user=ALICE, spec=JobSpec(script_location="/nonexistent/script.sh"))
    with pytest.raises(InvalidInput):
        b.submit_job(user=ALICE, spec=JobSpec(script_location="relative.sh"))


def test_s3_scripts_come_only_from_the_users_allowed_prefix(cluster, s3):  # noqa: F811
    s = plugin(cluster, listing="json", s3={"endpoint_url": s3.url, "region_name": s3.region,
                                            "allow": [f"s3://{SCRIPT_BUCKET}/{{user}}/"]})
    try:
        s3.put(SCRIPT_BUCKET, "gwalice/job.sh", b"#!/bin/sh\n#BSUB -J from-s3\necho from s3\n")
        jid = s.submit_job(user=ALICE, spec=JobSpec(script_location=f"s3://{SCRIPT_BUCKET}/gwalice/job.sh"))
        job = wait(s, jid, JobState.COMPLETED)
        assert job.name == "from-s3"
        assert s.job_output(user=ALICE, job_id=jid, stream="stdout", offset=0, limit=100).data == b"from s3\n"
        before = {j.job_id for j in s.list_jobs(user=ADMIN, query=JobQuery())}
        assert jid in before
        with pytest.raises(Forbidden):      # alice's object, fetched for bob
            s.submit_job(user=BOB, spec=JobSpec(script_location=f"s3://{SCRIPT_BUCKET}/gwalice/job.sh"))
        with pytest.raises(InvalidInput) as e:
            s.submit_job(user=ALICE, spec=JobSpec(script_location=f"s3://{SCRIPT_BUCKET}/gwalice/nope.sh"))
        assert "NoSuchKey" in e.value.msg
        assert {j.job_id for j in s.list_jobs(user=ADMIN, query=JobQuery())} == before
    finally:
        s.close()
    with pytest.raises(Forbidden) as e:     # no allow list: no s3:// at all
        b_plain = plugin(cluster)
        try:
            b_plain.submit_job(user=ALICE, spec=JobSpec(script_location=f"s3://{SCRIPT_BUCKET}/gwalice/job.sh"))
        finally:
            b_plain.close()
    assert "not enabled" in e.value.msg


def test_inactive_queue_keeps_jobs_pending_with_the_reason(b):
    b.control_queue(user=ADMIN, queue="short", action="inactivate")
    try:
        q = next(q for q in b.list_queues() if q.name == "short")
        assert (q.open, q.active, q.native_state) == (True, False, "Open:Inact")
        jid = b.submit_job(user=ALICE, spec=JobSpec(command="true", queue="short"))
        time.sleep(0.5)
        job = b.get_job(user=ALICE, job_id=jid)
        assert job.state is JobState.PENDING and "inactivated" in job.reason
    finally:
        b.control_queue(user=ADMIN, queue="short", action="activate")
    assert wait(b, jid, JobState.COMPLETED).exit_code == 0
    with pytest.raises(NotFound):
        b.control_queue(user=ADMIN, queue="nosuch", action="close")
    with pytest.raises(NotFound):
        b.control_host(user=ADMIN, host="nosuchhost", action="close")


def test_unknown_and_malformed_ids_are_404(b):
    for bad in ("99999999", "abc", "1;rm", "5[x]", "1" * 30):
        with pytest.raises(NotFound):
            b.get_job(user=ALICE, job_id=bad)
    with pytest.raises(NotFound):
        b.control_job(user=ALICE, job_id="99999999", action="kill")


def test_requeue_of_a_finished_job_mbatchd_cleaned_is_a_conflict_not_404():
    """mbatchd forgets a finished job CLEAN_PERIOD after its end. A requeue whose bjobs -l
    still showed the job DONE and whose brequeue then met ``Job <N> : No matching job found``
    is a 409 (the client has just seen the job), not "no such job"; a job bjobs -l showed
    running that the scheduler then does not know, and one it never knew, stay 404."""
    # 10 s: the done job must still be shown when control_job looks (a wait poll, a bsub
    # and a bjobs through sudo on a loaded machine come first).
    with lsf_standin(admins=("gwadmin",), slots=2, clean_period=10) as c:
        s = plugin(c, listing="json")
        run = s.transport.run

        def cleaned_first(argv, **kw):
            # brequeue runs only once mbatchd has cleaned the job bjobs -l has just shown
            if any(os.path.basename(str(a)) == "brequeue" for a in argv):
                jid = str(argv[-1])
                if c.state()["jobs"].get(jid, {}).get("status") not in ("DONE", "EXIT"):
                    assert c.run(["bkill", jid]).returncode == 0       # (as the administrator)
                deadline = time.monotonic() + 40
                while jid not in c.state().get("cleaned", {}):
                    assert time.monotonic() < deadline, f"job {jid} was not cleaned"
                    time.sleep(0.1)
            return run(argv, **kw)
        try:
            done = s.submit_job(user=ALICE, spec=JobSpec(command="true"))
            wait(s, done, JobState.COMPLETED)
            running = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60"))
            s.transport.run = cleaned_first
            with pytest.raises(Conflict) as e:
                s.control_job(user=ALICE, job_id=done, action="requeue")
            assert "has ended (COMPLETED)" in e.value.msg and "submit it again" in e.value.msg
            with pytest.raises(NotFound):              # GET agrees now: the job is gone
                s.get_job(user=ALICE, job_id=done)
            assert c.run(["bhist", "-l", done]).returncode == 0      # the event log keeps it
            wait(s, running, JobState.RUNNING)
            with pytest.raises(NotFound):
                s.control_job(user=ALICE, job_id=running, action="requeue")
            with pytest.raises(NotFound):
                s.control_job(user=ALICE, job_id="99999999", action="requeue")
        finally:
            s.close()


def _on_brequeue(s, act=None):
    """Record the arguments of each brequeue the plugin runs (those after its name), and
    call ``act(job_id)`` just before it runs."""
    calls, run = [], s.transport.run

    def hooked(argv, **kw):
        names = [os.path.basename(str(a)) for a in argv]
        if "brequeue" in names:
            calls.append([str(a) for a in argv[names.index("brequeue") + 1:]])
            if act:
                act(str(argv[-1]))
        return run(argv, **kw)
    s.transport.run = hooked
    return calls


def _wait_native(cluster, jid, status, runs, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        j = cluster.state()["jobs"][jid]
        if j["status"] == status and j.get("runs", 0) == runs:
            return
        assert time.monotonic() < deadline, f"job {jid} is {j['status']} after {j.get('runs')} runs"
        time.sleep(0.1)


def test_a_finished_job_is_requeued_with_the_filter_of_its_state_and_runs_again(b, cluster):
    """LSF's and OpenLava's brequeue requeue only started jobs (RUN, USUSP, SSUSP) unless
    told otherwise: a bare ``brequeue ID`` of a DONE or EXIT job is refused (``Job has
    already finished``), and so it is by the stand-in. The plugin passes -d for a job it has
    just seen DONE, -e for one seen EXIT (FAILED, or CANCELLED: killed), nothing for a
    running one; each comes back and runs again."""
    calls = _on_brequeue(b)
    done = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 1"))
    failed = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 1; exit 3"))
    killed = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 1", hold=True))
    running = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 60"))
    b.control_job(user=ALICE, job_id=killed, action="kill")
    wait(b, done, JobState.COMPLETED)
    wait(b, failed, JobState.FAILED)
    wait(b, killed, JobState.CANCELLED)
    wait(b, running, JobState.RUNNING)
    # The stand-in as the real one: no option (-r) is the RUN filter; -d/-e take one state.
    for jid, wrong in ((done, "-e"), (failed, "-d")):
        for argv, why in ((["brequeue", jid], "Job has already finished"),
                          (["brequeue", "-r", jid], "Job has already finished"),
                          (["brequeue", wrong, jid], "Bad or invalid action specification")):
            r = cluster.run(argv)
            assert (r.returncode, (r.stdout + r.stderr).decode()) == (255, f"Job <{jid}> : {why}\n"), argv
    r = cluster.run(["brequeue", "-d", running])
    assert (r.returncode, (r.stdout + r.stderr).decode()) == (255, f"Job <{running}> : Job has already started\n")
    assert [cluster.state()["jobs"][j]["status"] for j in (done, failed, killed, running)] == \
        ["DONE", "EXIT", "EXIT", "RUN"]

    for jid in (done, failed, killed, running):
        b.control_job(user=ALICE, job_id=jid, action="requeue")
    assert calls == [["-d", done], ["-e", failed], ["-e", killed], [running]]
    for jid, final, runs in ((done, JobState.COMPLETED, 2), (failed, JobState.FAILED, 2),
                             (killed, JobState.COMPLETED, 1)):
        job = wait(b, jid, final)
        assert cluster.state()["jobs"][jid]["runs"] == runs
        assert job.exit_code == (3 if final is JobState.FAILED else 0)
    wait(b, running, JobState.RUNNING)
    _wait_native(cluster, running, "RUN", 2)
    b.control_job(user=ALICE, job_id=running, action="kill")


def test_a_requeue_acts_only_on_the_state_it_was_decided_on(b, cluster):
    """The filter is the state bjobs -l has just shown (never -a): a job that changes before
    brequeue runs is refused by the scheduler (409) and left as it has become. Seen DONE and
    running again by then (someone requeued it): ``Job has already started``, its new run
    goes on; seen DONE and EXIT by then: ``Bad or invalid action specification``; seen
    running and ended by then: ``Job has already finished``, it is not started again."""
    marker = f"/tmp/gw-requeue-{os.getpid()}-{time.monotonic_ns()}"
    # First run DONE; a second one (requeued by somebody else) runs on, or fails.
    rerun_runs = b.submit_job(user=ALICE, spec=JobSpec(
        command=f"if [ -e {marker}.a ]; then sleep 60; fi; touch {marker}.a"))
    rerun_fails = b.submit_job(user=ALICE, spec=JobSpec(
        command=f"if [ -e {marker}.b ]; then exit 3; fi; touch {marker}.b"))
    ends = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 60"))
    wait(b, rerun_runs, JobState.COMPLETED)
    wait(b, rerun_fails, JobState.COMPLETED)
    wait(b, ends, JobState.RUNNING)

    def meanwhile(jid):                    # (as root, an administrator of the stand-in)
        if jid == ends:
            assert cluster.run(["bkill", jid]).returncode == 0
            _wait_native(cluster, jid, "EXIT", 1)
        else:
            assert cluster.run(["brequeue", "-d", jid]).returncode == 0
            _wait_native(cluster, jid, "RUN" if jid == rerun_runs else "EXIT", 2)
    calls = _on_brequeue(b, meanwhile)
    try:
        for jid, why in ((rerun_runs, "Job has already started"),
                         (rerun_fails, "Bad or invalid action specification"),
                         (ends, "Job has already finished")):
            with pytest.raises(Conflict) as e:
                b.control_job(user=ALICE, job_id=jid, action="requeue")
            assert why in e.value.msg, e.value.msg
        assert calls == [["-d", rerun_runs], ["-d", rerun_fails], [ends]]
        time.sleep(0.5)
        state = cluster.state()["jobs"]
        assert [(state[j]["status"], state[j]["runs"]) for j in (rerun_runs, rerun_fails, ends)] == \
            [("RUN", 2), ("EXIT", 2), ("EXIT", 1)]
        assert wait(b, rerun_runs, JobState.RUNNING)
    finally:
        cluster.run(["bkill", rerun_runs])
        for suffix in ("a", "b"):
            if os.path.exists(f"{marker}.{suffix}"):
                os.unlink(f"{marker}.{suffix}")


def test_a_brequeue_override_of_the_c_set_gets_the_same_filter(cluster):
    """AIP's c-set has no requeue of its own (501); an override (an AIP head node's
    LSF-compatible brequeue) is run with the same filter as the b-set's."""
    s = plugin(cluster, commands="c", env_file=None, bindir=str(cluster.bindir),
               env={"LSF_ENVDIR": str(cluster.envdir)}, listing="wide",
               commands_override={"brequeue": "brequeue"})
    try:
        calls = _on_brequeue(s)
        jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 1; exit 2"))
        wait(s, jid, JobState.FAILED)
        s.control_job(user=ALICE, job_id=jid, action="requeue")
        assert calls == [["-e", jid]]
        wait(s, jid, JobState.FAILED)
        assert cluster.state()["jobs"][jid]["runs"] == 2
    finally:
        s.close()


def test_files_go_through_the_same_transport_as_the_user(b):
    require(ROOT, "run_as: sudo needs root")
    assert b.file_transport(user=ALICE) == (b.transport, "gwalice")
    name = f".gw-aip-read-{os.getpid()}"
    jid = b.submit_job(user=ALICE, spec=JobSpec(command=f"printf secret > ~/{name}; chmod 600 ~/{name}"))
    wait(b, jid, JobState.COMPLETED)
    try:
        assert b.read_user_file(user=ALICE, path=f"~/{name}", limit=3) == b"sec"
        with pytest.raises(SchedulerRefused):            # bob may not read alice's 0600 file
            b.read_user_file(user=BOB, path=f"/home/gwalice/{name}", limit=100)
        assert b.read_user_file(user=ALICE, path="~/no-such-file", limit=10) is None
    finally:
        os.unlink(f"/home/gwalice/{name}")


def test_other_users_job_is_refused_by_the_scheduler_too(b):
    require(ROOT, "run_as: sudo needs root")
    jid = b.submit_job(user=ALICE, spec=JobSpec(command="true", hold=True))
    # the core checks ownership first; if it did not, the scheduler itself says no
    from gateway_aip import parse as P
    text = b._run("bkill", [jid], what="kill", as_user="gwbob")
    with pytest.raises(Exception) as exc:
        P.parse_action(text, jid)
    assert exc.value.status == 403 and "User permission denied" in exc.value.msg
    b.control_job(user=ADMIN, job_id=jid, action="kill")


# --------------------------------------------------------------------------- c-commands

def test_c_commands_without_requeue_or_badmin_answer_501(cluster):
    s = plugin(cluster, commands="c", env_file=None, bindir=str(cluster.bindir),
               env={"LSF_ENVDIR": str(cluster.envdir)}, listing="wide")
    try:
        jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 20"))
        wait(s, jid, JobState.RUNNING)
        with pytest.raises(NotImplementedByPlugin) as exc:
            s.control_job(user=ALICE, job_id=jid, action="requeue")
        assert "brequeue" in exc.value.msg
        for call in (lambda: s.control_host(user=ADMIN, host=s.list_hosts()[0].name, action="close"),
                     lambda: s.control_queue(user=ADMIN, queue="normal", action="close")):
            with pytest.raises(NotImplementedByPlugin):
                call()
        users = {u.name: u for u in s.list_users()}        # counted from cjobs: no busers
        assert users[ALICE.name if ROOT else s.account()].running >= 1
        info = s.cluster_info()
        assert info.scheduler == "aip" and info.hosts == 1 and info.version is None
        s.control_job(user=ALICE, job_id=jid, action="kill")
        assert wait(s, jid, {JobState.CANCELLED, JobState.FAILED}).state is JobState.CANCELLED
    finally:
        s.close()


def test_csub_authentication_failure_with_exit_0_is_502(cluster):
    s = plugin(cluster, commands="c")
    cluster.fail_auth(True)
    try:
        with pytest.raises(SchedulerRefused) as exc:
            s.submit_job(user=ALICE, spec=JobSpec(command="true"))
        assert exc.value.msg == "Failed in an AIP library call: Authentication failed. Job not submitted."
    finally:
        cluster.fail_auth(False)
        s.close()


# --------------------------------------------------------------------------- service mode

def test_service_mode_tags_jobs_with_the_gateway_user(cluster):
    # Locally, the service account is the gateway's own: its jobs could read the gateway's
    # secret key. That is refused unless allowed (as here: the test is the only user).
    with pytest.raises(ConfigError, match="allow_gateway_account"):
        plugin(cluster, run_as="service")
    s = plugin(cluster, run_as="service", listing="wide", allow_gateway_account=True)   # "wide" is read as "long"
    try:
        a = s.submit_job(user=ALICE, spec=JobSpec(command="true", hold=True))
        bj = s.submit_job(user=BOB, spec=JobSpec(command="true", hold=True))
        job = s.get_job(user=ALICE, job_id=a)
        assert job.user_name == "gwalice"
        # each gateway user starts in (and reaches files in) a directory of its own
        home = s.home_of(s.account())
        assert job.work_dir == f"{home}/hpc-gateway/gwalice"
        transport, as_user, files_home = s.file_transport(user=BOB)
        assert (transport, as_user, files_home) == (s.transport, None, f"{home}/hpc-gateway/gwbob")
        with pytest.raises(InvalidInput):
            s.file_transport(user=User("../etc"))
        mine = [j.job_id for j in s.list_jobs(user=BOB, query=JobQuery(user="gwbob"))]
        assert bj in mine and a not in mine
        with pytest.raises(InvalidInput):
            s.submit_job(user=ALICE, spec=JobSpec(command="true", native_options=["-P", "x"]))
        users = {u.name for u in s.list_users()}
        assert {"gwalice", "gwbob"} <= users
        # A job the service account did not submit is not alice's for naming her project.
        if ROOT:
            out = cluster.run(["bsub", "-P", "gwalice", "-H", "true"], user="gwbob")
            assert out.returncode == 0, out.stderr
            spoof = re.search(rb"<(\d+)>", out.stdout).group(1).decode()
            # The core lets a user see and control the jobs whose user_name is theirs.
            assert s.get_job(user=ADMIN, job_id=spoof).user_name == "gwbob"
            assert spoof not in [j.job_id for j in s.list_jobs(user=ALICE, query=JobQuery(user="gwalice"))]
            s.control_job(user=ADMIN, job_id=spoof, action="kill")
        for j in (a, bj):
            s.control_job(user=ADMIN, job_id=j, action="kill")
    finally:
        s.close()


# --------------------------------------------------------------------------- daemons down

def test_daemons_down_is_503_and_health_says_so(cluster):
    s = plugin(cluster)
    cluster.stop_daemon()
    try:
        with pytest.raises(SchedulerUnavailable) as exc:
            s.list_jobs(user=ALICE, query=JobQuery())
        assert "LIM is down" in exc.value.msg
        with pytest.raises(SchedulerUnavailable):
            s.submit_job(user=ALICE, spec=JobSpec(command="true"))
        with pytest.raises(SchedulerUnavailable):
            s.list_hosts()
        health = s.health()
        assert health.ok is False and "LIM is down" in health.detail
    finally:
        cluster.start_daemon()
        s.close()
    assert plugin(cluster).health().ok


def test_without_lsb_ntries_a_hanging_command_is_504(cluster):
    s = plugin(cluster, env={"LSB_NTRIES": ""}, timeout=2)
    cluster.stop_daemon()
    try:
        t0 = time.monotonic()
        with pytest.raises(SchedulerTimeout):
            s.list_queues()
        assert time.monotonic() - t0 < 10
    finally:
        cluster.start_daemon()
        s.close()


def test_closed_queue_refuses_submissions_with_409(b):
    b.control_queue(user=ADMIN, queue="vnc", action="close")
    try:
        with pytest.raises(Conflict) as exc:
            b.submit_job(user=ALICE, spec=JobSpec(command="true", queue="vnc"))
        assert "Queue has been closed" in exc.value.msg
    finally:
        b.control_queue(user=ADMIN, queue="vnc", action="open")


# --------------------------------------------------------------------------- injection

PAYLOAD = "x; touch {s} $(touch {s}) `touch {s}` | & é✓ -- '\""


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_shell_metacharacters_in_every_field_are_not_interpreted(cluster, transport, tmp_path):
    """Metacharacters, quotes, a leading --, newlines and unicode in every string field the
    gateway passes on (the command is the job's own shell line, so it is left out): no
    sentinel appears and the job carries the strings literally."""
    require(ROOT, "run_as: sudo and sshd need root")
    sentinel = f"/tmp/gw-aip-sentinel-{os.getpid()}-{transport}"
    payload = PAYLOAD.format(s=sentinel)
    workdir = f"/tmp/gw-aip-wd {payload.replace('/', '_')}"
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o777)
    script = f"/tmp/gw-aip-script {payload.replace('/', '_')}.sh"
    with open(script, "w") as fh:
        fh.write('#!/bin/sh\nprintf "%s|%s" "$GW_INJ" "$(pwd)"\n')
    os.chmod(script, 0o644)
    stack = []
    try:
        opts = {}
        if transport == "ssh":
            from tests.support.sshd import sshd, sshd_available
            ok, why = sshd_available()
            require(ok, why)
            server = sshd(users=("root",))
            opts["transport"] = server.__enter__().transport_options(user="root")
            stack.append(server)
        s = plugin(cluster, listing="json", **opts)
        stack.append(s)
        out_file = f"{workdir}/out {payload.replace('/', '_')}.txt"
        jid = s.submit_job(user=ALICE, spec=JobSpec(
            script_location=script, name=payload, work_dir=workdir, stdout=out_file,
            environment={"GW_INJ": payload + "\nline2"}, native_options=["-Jd", payload, "-P", "p$(id)"]))
        job = wait(s, jid, {JobState.COMPLETED, JobState.FAILED})
        assert job.state is JobState.COMPLETED, job
        assert job.name == payload and job.work_dir == workdir and job.stdout_path == out_file
        data = s.job_output(user=ALICE, job_id=jid, stream="stdout", offset=0, limit=10000).data
        assert data.decode() == f"{payload}\nline2|{workdir}"
        assert not os.path.exists(sentinel)
        with pytest.raises(InvalidInput):
            s.submit_job(user=ALICE, spec=JobSpec(command="true", environment={"A;touch x": "1"}))
    finally:
        for obj in reversed(stack):
            if hasattr(obj, "__exit__"):
                obj.__exit__(None, None, None)
            else:
                obj.close()
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
        os.unlink(script)
        assert not os.path.exists(sentinel)


@pytest.mark.parametrize("listing", ["json", "wide"])
def test_job_state_comes_from_the_shared_listing_and_agrees_with_get_job(cluster, listing):
    """What a long poll looks at: the job's state from the listing every caller shares, not
    a `bjobs -l` per look; the same state get_job gives, for a job, an array and an element."""
    s = plugin(cluster, listing=listing, cache_seconds=60)
    jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", name="js", hold=True))
    arr = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", name="jsa", array="1-2", hold=True))
    try:
        ran = []
        run = s._run

        def counting(name, args, **kw):
            ran.append([name, *args])
            return run(name, args, **kw)
        s._run = counting
        looks = {j: [s.job_state(user=ALICE, job_id=j) for _ in range(10)]
                 for j in (jid, arr, f"{arr}[1]")}
        # One listing for all 30 looks (plus, in it, the settling of earlier tests' EXIT jobs,
        # once each); nothing asked about these jobs in particular.
        assert sum(1 for c in ran if c[0] == "bjobs" and "-l" not in c) == 1, ran
        assert not [c for c in ran if {jid, arr, f"{arr}[1]"} & set(c)], ran
        s._run = run
        for j, seen in looks.items():
            assert set(seen) == {s.get_job(user=ALICE, job_id=j).state} == {JobState.HELD}, j
        assert s.job_state(user=ALICE, job_id="987654") is None      # not listed: get_job decides
        assert s.job_state(user=ALICE, job_id="no-such") is None
    finally:
        s._run = run
        for j in (jid, arr):
            s.control_job(user=ALICE, job_id=j, action="kill")
        s.close()


def test_an_exit_jobs_details_are_looked_up_once(cluster):
    """bjobs -w has no finish time: a failed job's exit code and whether it was killed come
    from bjobs -l and bhist -l (the event log), which every refresh ran again for every
    recent EXIT job. Once is enough, until the job changes state."""
    s = plugin(cluster, listing="wide")
    try:
        jid = s.submit_job(user=ALICE, spec=JobSpec(script="#!/bin/sh\nexit 7\n"))
        assert wait(s, jid, {JobState.FAILED, JobState.CANCELLED}).exit_code == 7
        s.list_jobs(user=ALICE, query=JobQuery())                      # looks it up
        ran = []
        real = s._run

        def counting(name, *args, **kw):
            ran.append((name, list(args[0]) if args else []))
            return real(name, *args, **kw)

        s._run = counting
        for _ in range(3):
            job = [j for j in s.list_jobs(user=ALICE, query=JobQuery()) if j.job_id == jid][0]
            assert (job.state, job.exit_code) == (JobState.FAILED, 7)
        lookups = [r for r in ran if r[0] == "bhist" or (r[0] == "bjobs" and "-l" in r[1])]
        assert not lookups, lookups
        assert len([r for r in ran if r[0] == "bjobs"]) == 3           # the listings themselves
    finally:
        s.close()


# --------------------------------------------------------------------------- changing a job

def recording_runs(s):
    """Record (command, args, as_user) of every scheduler command the plugin runs."""
    ran, real = [], s._run

    def recording(name, args, **kw):
        ran.append((name, list(args), kw.get("as_user")))
        return real(name, args, **kw)
    s._run = recording
    return ran


def changes(ran):
    return [r for r in ran if r[0] in ("bmod", "bswitch")]      # bswitch: never run any more


def test_rename_and_lower_the_time_limit_with_one_bmod(cluster):
    from gateway.models import JobChange
    s = plugin(cluster, listing="json", cache_seconds=60)
    try:
        jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", name="before", hold=True,
                                                    time_limit_minutes=60))
        assert [j.name for j in s.list_jobs(user=ALICE, query=JobQuery()) if j.job_id == jid] == ["before"]
        ran = recording_runs(s)
        s.modify_job(user=ALICE, job_id=jid, change=JobChange(name="after", time_limit_minutes=30))
        assert changes(ran) == [("bmod", ["-J", "after", "-W", "30", jid], "gwalice" if ROOT else None)]
        job = s.get_job(user=ALICE, job_id=jid)
        assert (job.name, job.time_limit_minutes, job.state) == ("after", 30, JobState.HELD)
        # the listing kept for 60 s was dropped: it shows the new name at once
        assert [j.name for j in s.list_jobs(user=ALICE, query=JobQuery()) if j.job_id == jid] == ["after"]
        # a field already as asked is left alone; nothing left: nothing runs
        ran.clear()
        s.modify_job(user=ALICE, job_id=jid, change=JobChange(name="after", time_limit_minutes=20))
        assert changes(ran) == [("bmod", ["-W", "20", jid], "gwalice" if ROOT else None)]
        ran.clear()
        s.modify_job(user=ALICE, job_id=jid, change=JobChange(name="after", time_limit_minutes=20))
        assert changes(ran) == []
        s.control_job(user=ALICE, job_id=jid, action="kill")
    finally:
        s.close()


def test_a_running_jobs_time_limit_is_lowered_and_kept_by_the_scheduler(cluster):
    from gateway.models import JobChange
    s = plugin(cluster, listing="wide")
    try:
        jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", time_limit_minutes=60))
        wait(s, jid, JobState.RUNNING)
        s.modify_job(user=ALICE, job_id=jid, change=JobChange(time_limit_minutes=30))
        job = s.get_job(user=ALICE, job_id=jid)
        assert (job.time_limit_minutes, job.state) == (30, JobState.RUNNING)
        assert cluster.state()["jobs"][jid]["run_limit"] == 30          # the daemon enforces this one
        # A started job keeps its name (OpenLava/LSF bmod: -J is not among what may change)
        # and its queue (checked before anything runs).
        with pytest.raises(Conflict) as exc:
            s.modify_job(user=ALICE, job_id=jid, change=JobChange(name="late", time_limit_minutes=20))
        assert "Only the following parameters can be used to modify a running job" in exc.value.msg
        assert s.get_job(user=ALICE, job_id=jid).time_limit_minutes == 30     # both or neither
        ran = recording_runs(s)
        with pytest.raises(Conflict, match="waiting"):
            s.modify_job(user=ALICE, job_id=jid, change=JobChange(queue="short"))
        assert changes(ran) == []
        s.control_job(user=ALICE, job_id=jid, action="kill")
    finally:
        s.close()


def test_switch_the_queue_of_a_pending_job(cluster):
    """Queue and name in one bmod (-q moves a waiting job): no bswitch first."""
    from gateway.models import JobChange
    s = plugin(cluster, listing="json", cache_seconds=60)
    try:
        jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", name="mover", hold=True))
        assert [j.queue for j in s.list_jobs(user=ALICE, query=JobQuery()) if j.job_id == jid] == ["normal"]
        ran = recording_runs(s)
        # short allows 60 minutes: a job without a limit moves in with one (JobChange.checked)
        s.modify_job(user=ALICE, job_id=jid, change=JobChange(queue="short", name="moved", time_limit_minutes=30))
        assert changes(ran) == [("bmod", ["-q", "short", "-J", "moved", "-W", "30", jid],
                                 "gwalice" if ROOT else None)]
        job = s.get_job(user=ALICE, job_id=jid)
        assert (job.queue, job.name, job.state) == ("short", "moved", JobState.HELD)
        assert [(j.queue, j.name) for j in s.list_jobs(user=ALICE, query=JobQuery(queue="short"))
                if j.job_id == jid] == [("short", "moved")]
        # the queue it is in now is no move: only the rest is sent
        ran.clear()
        s.modify_job(user=ALICE, job_id=jid, change=JobChange(queue="short", time_limit_minutes=9))
        assert changes(ran) == [("bmod", ["-W", "9", jid], "gwalice" if ROOT else None)]
        s.control_job(user=ALICE, job_id=jid, action="kill")
    finally:
        s.close()


def test_a_refused_change_is_made_none_of(b):
    """One bmod: when LSF refuses the queue (closed), the name and limit that came with it
    are not made either, and nothing is left to undo."""
    from gateway.models import JobChange
    jid = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", name="stays", hold=True,
                                                time_limit_minutes=60))
    b.control_queue(user=ADMIN, queue="vnc", action="close")
    try:
        ran = recording_runs(b)
        with pytest.raises(Conflict) as exc:
            b.modify_job(user=ALICE, job_id=jid, change=JobChange(queue="vnc", name="moved", time_limit_minutes=30))
        assert exc.value.msg == "vnc: Queue has been closed. Job not modified."
        assert [r[1] for r in changes(ran)] == [["-q", "vnc", "-J", "moved", "-W", "30", jid]]
    finally:
        b.control_queue(user=ADMIN, queue="vnc", action="open")
    job = b.get_job(user=ALICE, job_id=jid)
    assert (job.queue, job.name, job.time_limit_minutes) == ("normal", "stays", 60)
    b.control_job(user=ALICE, job_id=jid, action="kill")


def test_a_queue_the_user_may_not_use_is_403():
    """LSF's "User cannot use the queue" (the queue's USERS) is a refusal of the caller, as
    Slurm's "not permitted to use this partition": 403, not 502; an administrator may."""
    from gateway.models import JobChange
    require(ROOT, "the queue's users are told apart by their accounts: run_as: sudo needs root")
    queues = ({"name": "normal", "priority": 30, "default": True},
              {"name": "private", "priority": 40, "users": ["gwbob"]})
    with lsf_standin(admins=("gwadmin",), slots=2, queues=queues) as cluster:
        s = plugin(cluster, listing="json", admin_account="gwadmin")
        try:
            jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", name="mine", hold=True))
            with pytest.raises(Forbidden) as exc:
                s.modify_job(user=ALICE, job_id=jid, change=JobChange(queue="private", name="moved"))
            assert exc.value.msg == "private: User cannot use the queue. Job not modified."
            job = s.get_job(user=ALICE, job_id=jid)
            assert (job.queue, job.name) == ("normal", "mine")
            s.modify_job(user=ADMIN, job_id=jid, change=JobChange(queue="private"))   # as gwadmin
            assert s.get_job(user=ALICE, job_id=jid).queue == "private"
            s.control_job(user=ALICE, job_id=jid, action="kill")
        finally:
            s.close()


def test_a_started_jobs_limit_is_raised_by_an_administrator_only(cluster):
    """JobChange.checked on the plugin's own fresh look: the owner lowers it, only an
    administrator raises it (403, nothing run). An administrator's own job is changed as
    its owner, whose account LSF lets change a started job's run limit: no LSF
    administrator's account is needed for it."""
    from gateway.models import JobChange
    require(ROOT, "run_as: sudo needs root")
    s = plugin(cluster, listing="wide", admin_account="gwadmin")
    boss = User("gwbob", is_admin=True)             # a gateway administrator, no LSF one
    try:
        jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", time_limit_minutes=30))
        own = s.submit_job(user=boss, spec=JobSpec(command="sleep 60", time_limit_minutes=30))
        wait(s, jid, JobState.RUNNING)
        wait(s, own, JobState.RUNNING, user=boss)
        ran = recording_runs(s)
        with pytest.raises(Forbidden, match="only an administrator"):
            s.modify_job(user=ALICE, job_id=jid, change=JobChange(time_limit_minutes=60))
        assert changes(ran) == []
        s.modify_job(user=ALICE, job_id=jid, change=JobChange(time_limit_minutes=20))
        s.modify_job(user=ADMIN, job_id=jid, change=JobChange(time_limit_minutes=90))
        s.modify_job(user=boss, job_id=own, change=JobChange(time_limit_minutes=90))
        assert changes(ran) == [("bmod", ["-W", "20", jid], "gwalice"), ("bmod", ["-W", "90", jid], "gwadmin"),
                                ("bmod", ["-W", "90", own], "gwbob")]
        assert cluster.state()["jobs"][jid]["run_limit"] == cluster.state()["jobs"][own]["run_limit"] == 90
        for j in (jid, own):
            s.control_job(user=ADMIN, job_id=j, action="kill")
    finally:
        s.close()


def test_a_limit_beyond_the_queues_is_refused_before_bmod_runs(b):
    """The (new) queue's hard RUNLIMIT (bqueues -l, read at the change) binds users: 422 on
    timeLimitMinutes with nothing run. An administrator is not held by the gateway, but
    OpenLava's mbatchd refuses a limit beyond the queue's hard one to everybody: LSF's
    words, 422 too."""
    from gateway.models import JobChange
    assert {q.name: q.time_limit_minutes for q in b.list_queues()} == {"short": 60, "vnc": None, "normal": None}
    jid = b.submit_job(user=ALICE, spec=JobSpec(command="true", hold=True, queue="short", time_limit_minutes=1))
    far = b.submit_job(user=ALICE, spec=JobSpec(command="true", hold=True, time_limit_minutes=90))
    ran = recording_runs(b)
    for target, change in ((jid, JobChange(time_limit_minutes=61)),
                           (far, JobChange(queue="short", time_limit_minutes=61))):
        with pytest.raises(InvalidInput) as exc:
            b.modify_job(user=ALICE, job_id=target, change=change)
        assert list(exc.value.errors) == ["timeLimitMinutes"] and "60" in exc.value.msg
    assert changes(ran) == [] and [r[1] for r in ran if r[0] == "bqueues"] == [["-l", "short"]] * 2
    b.modify_job(user=ALICE, job_id=jid, change=JobChange(time_limit_minutes=60))
    # a job keeping a limit the new queue does not allow: refused as a whole, before bmod
    ran.clear()
    with pytest.raises(InvalidInput) as exc:
        b.modify_job(user=ALICE, job_id=far, change=JobChange(queue="short", name="moved"))
    assert exc.value.msg == "queue short allows at most 60 minutes; give timeLimitMinutes with the move"
    assert list(exc.value.errors) == ["timeLimitMinutes"] and changes(ran) == []
    with pytest.raises(InvalidInput) as exc:
        b.modify_job(user=ADMIN, job_id=jid, change=JobChange(time_limit_minutes=61))
    assert exc.value.msg == "RUNLIMIT: Cannot exceed queue's hard limit(s). Job not modified."
    assert b.get_job(user=ALICE, job_id=jid).time_limit_minutes == 60
    job = b.get_job(user=ALICE, job_id=far)
    assert (job.queue, job.name, job.time_limit_minutes) == ("normal", "true", 90)
    for j in (jid, far):
        b.control_job(user=ALICE, job_id=j, action="kill")


def test_an_unknown_queue_is_422_with_the_schedulers_words(b):
    from gateway.models import JobChange
    jid = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", hold=True))
    ran = recording_runs(b)
    with pytest.raises(InvalidInput) as exc:
        b.modify_job(user=ALICE, job_id=jid, change=JobChange(queue="nosuchqueue", name="never"))
    assert exc.value.msg == "nosuchqueue: No such queue. Job not modified." and list(exc.value.errors) == ["queue"]
    assert [r[1] for r in changes(ran)] == [["-q", "nosuchqueue", "-J", "never", jid]]   # one bmod, refused whole
    job = b.get_job(user=ALICE, job_id=jid)
    assert (job.queue, job.name) == ("normal", "sleep 60")
    # a queue that is not even a name: refused before anything runs
    ran.clear()
    with pytest.raises(InvalidInput) as exc:
        b.modify_job(user=ALICE, job_id=jid, change=JobChange(queue="short;id"))
    assert list(exc.value.errors) == ["queue"] and ran == []
    b.control_job(user=ALICE, job_id=jid, action="kill")


def test_a_finished_job_cannot_change_409(b):
    from gateway.models import JobChange
    from gateway_aip import parse as P
    jid = b.submit_job(user=ALICE, spec=JobSpec(command="true", name="done"))
    wait(b, jid, JobState.COMPLETED)
    ran = recording_runs(b)
    for change in (JobChange(name="x"), JobChange(time_limit_minutes=5), JobChange(queue="short")):
        with pytest.raises(Conflict, match="already finished"):
            b.modify_job(user=ALICE, job_id=jid, change=change)
    assert changes(ran) == []
    # The scheduler says the same, should the job end between the plugin's look and bmod.
    as_user = "gwalice" if ROOT else None
    with pytest.raises(Conflict) as exc:
        P.parse_modify(b._run("bmod", ["-q", "short", "-J", "x", jid], what="t", as_user=as_user), jid)
    assert exc.value.msg == "Job has already finished. Job not modified."
    job = b.get_job(user=ALICE, job_id=jid)
    assert (job.name, job.queue) == ("done", "normal")


def test_unknown_and_malformed_ids_and_bad_names_change_nothing(b):
    from gateway.models import JobChange
    ran = recording_runs(b)
    for bad in ("99999999", "abc", "1;rm", "5[x]"):
        with pytest.raises(NotFound):
            b.modify_job(user=ALICE, job_id=bad, change=JobChange(name="x"))
    jid = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", name="keep", hold=True))
    for bad in ("a[1]", "x>, Project <bob"):
        with pytest.raises(InvalidInput) as exc:
            b.modify_job(user=ALICE, job_id=jid, change=JobChange(name=bad))
        assert list(exc.value.errors) == ["name"]
    arr = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", name="arr", array="1-2", hold=True))
    for target in (arr, f"{arr}[1]"):
        with pytest.raises(InvalidInput, match="array"):
            b.modify_job(user=ALICE, job_id=target, change=JobChange(name="renamed"))
    assert changes(ran) == []
    b.modify_job(user=ALICE, job_id=arr, change=JobChange(time_limit_minutes=7))     # limits may change
    assert {b.get_job(user=ALICE, job_id=f"{arr}[{i}]").time_limit_minutes for i in (1, 2)} == {7}
    # OpenLava's bmod moves no job array (-q): LSF's words, a 422 on the queue, nothing made
    for target in (arr, f"{arr}[1]"):
        with pytest.raises(InvalidInput) as exc:
            b.modify_job(user=ALICE, job_id=target, change=JobChange(queue="short", time_limit_minutes=8))
        assert list(exc.value.errors) == ["queue"] and "job array" in exc.value.msg
    assert {(j.queue, j.time_limit_minutes) for i in (1, 2)
            for j in [b.get_job(user=ALICE, job_id=f"{arr}[{i}]")]} == {("normal", 7)}
    # the scheduler too refuses someone else's job and an unknown one
    from gateway_aip import parse as P
    if ROOT:
        with pytest.raises(Forbidden) as exc:
            P.parse_modify(b._run("bmod", ["-J", "x", jid], what="t", as_user="gwbob"), jid)
        assert exc.value.msg == "User permission denied. Job not modified."
    with pytest.raises(NotFound):
        P.parse_modify(b._run("bmod", ["-J", "x", "99999999"], what="t"), "99999999")
    for j in (jid, arr):
        b.control_job(user=ALICE, job_id=j, action="kill")


def test_an_admin_changes_another_users_job_as_the_admin_account(cluster):
    from gateway.models import JobChange
    require(ROOT, "run_as: sudo needs root")
    s = plugin(cluster, admin_account="gwadmin")
    try:
        jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", hold=True, time_limit_minutes=10))
        ran = recording_runs(s)
        s.modify_job(user=User("root", is_admin=True), job_id=jid, change=JobChange(time_limit_minutes=600))
        assert changes(ran) == [("bmod", ["-W", "600", jid], "gwadmin")]
        assert s.get_job(user=ALICE, job_id=jid).time_limit_minutes == 600
        s.control_job(user=ALICE, job_id=jid, action="kill")
    finally:
        s.close()


def test_c_commands_change_jobs_with_the_lsf_compatible_names(cluster):
    from gateway.models import JobChange
    s = plugin(cluster, commands="c", env_file=None, bindir=str(cluster.bindir),
               env={"LSF_ENVDIR": str(cluster.envdir)}, listing="wide")
    try:
        jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", hold=True))
        s.modify_job(user=ALICE, job_id=jid, change=JobChange(name="c-renamed", queue="short",
                                                              time_limit_minutes=15))
        job = s.get_job(user=ALICE, job_id=jid)
        assert (job.name, job.queue, job.time_limit_minutes) == ("c-renamed", "short", 15)
        s.control_job(user=ALICE, job_id=jid, action="kill")
    finally:
        s.close()
    off = plugin(cluster, commands="c", env_file=None, bindir=str(cluster.bindir),
                 env={"LSF_ENVDIR": str(cluster.envdir)}, commands_override={"bmod": None})
    try:
        jid = off.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", hold=True))
        with pytest.raises(NotImplementedByPlugin, match="bmod"):
            off.modify_job(user=ALICE, job_id=jid, change=JobChange(name="x"))
        off.control_job(user=ALICE, job_id=jid, action="kill")
    finally:
        off.close()


@pytest.mark.parametrize("transport", ["local", "ssh"])
def test_shell_metacharacters_in_a_new_name_reach_bmod_as_one_argument(cluster, transport):
    from gateway.models import JobChange
    require(ROOT, "run_as: sudo and sshd need root")
    sentinel = f"/tmp/gw-aip-bmod-sentinel-{os.getpid()}-{transport}"
    payload = PAYLOAD.format(s=sentinel) + "\t-J evil"
    stack = []
    try:
        opts = {}
        if transport == "ssh":
            from tests.support.sshd import sshd, sshd_available
            ok, why = sshd_available()
            require(ok, why)
            server = sshd(users=("root",))
            opts["transport"] = server.__enter__().transport_options(user="root")
            stack.append(server)
        s = plugin(cluster, listing="json", **opts)
        stack.append(s)
        jid = s.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", hold=True))
        ran = recording_runs(s)
        s.modify_job(user=ALICE, job_id=jid, change=JobChange(name=payload))
        assert changes(ran) == [("bmod", ["-J", payload, jid], "gwalice")]
        job = s.get_job(user=ALICE, job_id=jid)
        assert job.name == payload and job.state is JobState.HELD
        assert [j.name for j in s.list_jobs(user=ALICE, query=JobQuery()) if j.job_id == jid] == [payload]
        assert not os.path.exists(sentinel)
        s.control_job(user=ALICE, job_id=jid, action="kill")
    finally:
        for obj in reversed(stack):
            if hasattr(obj, "__exit__"):
                obj.__exit__(None, None, None)
            else:
                obj.close()
        assert not os.path.exists(sentinel)


def test_a_started_job_without_its_own_limit_is_bound_by_its_queues(b):
    """bjobs -l shows only a job's own -W; the queue's limit binds one without it (short: 60
    minutes). Its owner may lower that, not raise it: 61 would be a raise of a started job
    (403), not a first limit."""
    from gateway.models import JobChange
    jid = b.submit_job(user=ALICE, spec=JobSpec(command="sleep 60", queue="short"))
    wait(b, jid, JobState.RUNNING)
    assert b.get_job(user=ALICE, job_id=jid).time_limit_minutes is None
    ran = recording_runs(b)
    with pytest.raises(Forbidden):
        b.modify_job(user=ALICE, job_id=jid, change=JobChange(time_limit_minutes=61))
    assert changes(ran) == []
    b.modify_job(user=ALICE, job_id=jid, change=JobChange(time_limit_minutes=50))
    assert b.get_job(user=ALICE, job_id=jid).time_limit_minutes == 50
    b.control_job(user=ALICE, job_id=jid, action="kill")


def test_queues_are_listed_when_their_limits_cannot_be_read(b):
    """bqueues -l only adds run limits: its failure (a timeout, an outage, output too big for
    an SSM answer) leaves them out of the listing instead of failing it, for a minute."""
    real = b._run
    calls = []

    def failing(name, args, **kw):
        if name == "bqueues" and args[:1] == ["-l"]:
            calls.append(args)
            raise SchedulerTimeout("bqueues -l did not answer")
        return real(name, args, **kw)
    b._run = failing
    try:
        queues = {q.name: q for q in b.list_queues()}
        assert "short" in queues and queues["short"].time_limit_minutes is None
        b.list_queues()
        assert len(calls) == 1                        # not asked again at once
    finally:
        b._run = real
