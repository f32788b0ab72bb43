"""The parsers, on output captured from a real Slurm 22.05 (fixtures/, see capture_fixtures.py)."""
from __future__ import annotations

import json
from datetime import timezone
from pathlib import Path

import pytest

from gateway.errors import (Conflict, Forbidden, InvalidInput, NotFound, SchedulerRefused,
                            SchedulerUnavailable)
from gateway.models import JobState
from gateway_slurm_ssm import parse
from gateway_slurm_ssm.commands import FIELD_SEP, FORMAT_FIELDS, RECORD_SEP

FIXTURES = Path(__file__).parent / "fixtures"


def fx(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def jobs_by_name(records):
    return {job.name: job for job, _ in records}


@pytest.fixture(scope="module", params=["json", "format"])
def queue(request):
    """The same queue seen through squeue --json and through the format strings."""
    if request.param == "json":
        return request.param, parse.parse_squeue_json(fx("squeue_json")["stdout"])
    return request.param, parse.parse_squeue_format(fx("squeue_format")["stdout"])


# ---------------------------------------------------------------- squeue, both parsers

def test_both_parsers_see_the_same_jobs(queue):
    _, records = queue
    ids = {job.job_id for job, _ in records}
    other = parse.parse_squeue_format(fx("squeue_format")["stdout"]) if queue[0] == "json" \
        else parse.parse_squeue_json(fx("squeue_json")["stdout"])
    assert ids == {job.job_id for job, _ in other}
    assert len(records) == 14


@pytest.mark.parametrize("name,state,native,reason", [
    ("done", JobState.COMPLETED, "COMPLETED", None),
    ("failed", JobState.FAILED, "FAILED", "NonZeroExitCode"),
    ("timeout", JobState.FAILED, "TIMEOUT", "TimeLimit"),
    ("running", JobState.RUNNING, "RUNNING", None),
    ("suspended", JobState.SUSPENDED, "SUSPENDED", None),
    ("cancelled", JobState.CANCELLED, "CANCELLED", None),
    ("held-user", JobState.HELD, "PENDING", "JobHeldUser"),
    ("dependent", JobState.PENDING, "PENDING", "Dependency"),
    # held after it had started: still running, Slurm keeps the hold reason
    ("held-admin", JobState.RUNNING, "RUNNING", "JobHeldAdmin"),
    ("データ|;$(x)", JobState.HELD, "PENDING", "JobHeldUser"),
])
def test_states_are_normalized_with_the_native_words_kept(queue, name, state, native, reason):
    job = jobs_by_name(queue[1])[name]
    assert (job.state, job.native_state, job.reason) == (state, native, reason)


def test_exit_codes_from_json_are_decoded_wait_statuses():
    jobs = jobs_by_name(parse.parse_squeue_json(fx("squeue_json")["stdout"]))
    assert jobs["done"].exit_code == 0
    assert jobs["failed"].exit_code == 3            # raw 768
    assert jobs["signalled"].exit_code == 143       # raw 15: SIGTERM
    assert jobs["cancelled"].exit_code == 143       # raw 36608: 143 << 8
    assert jobs["running"].exit_code is None


def test_format_strings_know_only_that_completed_means_zero():
    jobs = jobs_by_name(parse.parse_squeue_format(fx("squeue_format")["stdout"]))
    assert jobs["done"].exit_code == 0
    assert jobs["failed"].exit_code is None         # filled in by scontrol show job
    assert parse.parse_show_job_exit_code(fx("scontrol_show_job_failed")["stdout"]) == 3
    assert parse.parse_show_job_exit_code(fx("scontrol_show_job_signalled")["stdout"]) == 143
    assert parse.parse_show_job_exit_code(fx("scontrol_show_job_failed")["stdout"], name="failed") == 3


def test_exit_codes_in_a_jobs_own_free_text_are_not_believed():
    """A job's name, MCS label, comment or work dir may say ExitCode=...: the code is believed
    only when every ExitCode= after the name (which squeue printed) agrees."""
    real = fx("scontrol_show_job_failed")["stdout"]
    name = "x ExitCode=0:0 Reboot=0 ExitCode=0:0"
    in_name = real.replace("JobName=failed ", f"JobName={name} ")
    assert in_name.count("ExitCode=0:0") == 2
    assert parse.parse_show_job_exit_code(in_name) is None               # unsure without the name
    assert parse.parse_show_job_exit_code(in_name, name=name) == 3
    # Measured on 22.05 (mcs/none): --mcs-label="x ExitCode=0:0" is kept, before the real field.
    in_label = real.replace("MCS_label=N/A ", "MCS_label=x ExitCode=0:0 ")
    work_dir = real.replace(" WorkDir=/tmp ", " WorkDir=/tmp/a ExitCode=0:0 ")
    for forged in (in_label, work_dir):
        assert parse.parse_show_job_exit_code(forged, name="failed") is None
    agreeing = real.replace(" WorkDir=/tmp ", " WorkDir=/tmp/a ExitCode=3:0 ")
    assert parse.parse_show_job_exit_code(agreeing, name="failed") == 3
    assert parse.parse_show_job_exit_code(real, name="another") is None     # not that job's record


def test_job_fields(queue):
    jobs = jobs_by_name(queue[1])
    running = jobs["running"]
    assert running.user_name == "gwalice" and running.queue == "batch"
    assert running.hosts == ["vm"] and running.nodes == 1 and running.cpus == 1
    assert running.time_limit_minutes == 30
    assert running.work_dir == "/tmp"
    assert running.stdout_path == "/tmp/fx-run-running-30.out"     # --output=/tmp/fx-run-%x-%j.out
    assert running.stderr_path == "/tmp/fx-run-30.err"
    assert running.submit_time.tzinfo is timezone.utc and running.start_time is not None
    assert running.end_time is None                   # Slurm's expected end is not an end
    suspended = jobs["suspended"]
    assert suspended.cpus == 2 and suspended.memory_mb == 100 and suspended.user_name == "gwbob"
    # --mem-per-cpu=30M, 2 CPUs: 60 MB in all (squeue -O MinMemory says 30M, per CPU or per
    # node it does not say; its tres-alloc has the total)
    assert (jobs["dependent"].cpus, jobs["dependent"].memory_mb) == (2, 60)
    held = jobs["held-user"]
    assert held.start_time is None and held.hosts == []
    assert held.stdout_path == "/tmp/slurm-33.out"   # sbatch's default name in the work dir
    assert jobs["timeout"].end_time is not None


def test_array_tasks_and_pending_remainder(queue):
    records = [(job, extra) for job, extra in queue[1] if job.name == "array"]
    by_id = {job.job_id: (job, extra) for job, extra in records}
    assert set(by_id) == {"36_1", "36_2", "36_[3-4%2]"}
    job, extra = by_id["36_1"]
    assert job.state is JobState.RUNNING and extra["array_job_id"] == "36" and extra["array_task_id"] == "1"
    assert job.stdout_path == "/tmp/slurm-36_1.out"   # slurm-%A_%a.out, not the task's own id
    job, extra = by_id["36_[3-4%2]"]
    assert job.reason == "JobArrayTaskLimit" and extra["array_tasks"] == "3-4%2" and extra["id"] == "36"


def test_json_output_pattern_expansion():
    jobs = jobs_by_name(parse.parse_squeue_json(fx("squeue_json")["stdout"]))
    assert jobs["done"].stdout_path == "/tmp/fx-27.out"                 # --output=/tmp/fx-%j.out
    assert jobs["running"].stdout_path == "/tmp/fx-run-running-30.out"  # /tmp/fx-run-%x-%j.out
    # A relative pattern is the work dir's (as 22.05 printed for sbatch -o out-%j-%x.txt,
    # run from /home/gwbob, in an earlier capture).
    doc = json.loads(fx("squeue_json")["stdout"])
    held = next(j for j in doc["jobs"] if j["name"] == "held-user")
    held.update(standard_output="out-%j-%x.txt", current_working_directory="/home/gwbob")
    job = jobs_by_name(parse.parse_squeue_json(json.dumps(doc)))["held-user"]
    assert job.stdout_path == "/home/gwbob/out-33-held-user.txt"


def test_squeue_json_with_the_controller_down_is_unavailable():
    d = fx("down_squeue_json")
    assert d["returncode"] == 0                       # squeue --json exits 0 all the same
    with pytest.raises(SchedulerUnavailable) as e:
        parse.parse_squeue_json(d["stdout"])
    assert "slurm_load_jobs" in e.value.msg


def test_squeue_format_with_the_controller_down():
    d = fx("down_squeue_format")
    err = parse.refusal(d["stdout"], d["stderr"])
    assert isinstance(err, SchedulerUnavailable)
    assert "Unable to contact slurm controller" in err.msg


def test_format_output_with_no_readable_record_is_refused():
    with pytest.raises(SchedulerRefused):
        parse.parse_squeue_format("1\x1f2\x1e\n")


@pytest.mark.parametrize("sep", ["\x1f", "\x1e", "\x1f\x1e\x1f"])
def test_one_job_with_the_separators_in_its_name_does_not_take_the_listing_down(sep):
    """A job name (#SBATCH -J, or any cluster user's sbatch) may hold the format's separators:
    that record is left out, every other job is still listed."""
    text = fx("squeue_format")["stdout"]
    records = [r for r in text.split("\x1e") if r.strip("\n")]
    name_at = 4                                   # FORMAT_FIELDS: JobArrayID, JobID, ArrayJobID, ArrayTaskID, Name
    fields = records[0].lstrip("\n").split("\x1f")
    fields[name_at] = f"evil{sep}name"
    spoiled = "\x1e".join(["\x1f".join(fields), *records[1:]]) + "\x1e\n"
    all_jobs = parse.parse_squeue_format(text)
    got = parse.parse_squeue_format(spoiled)
    assert [j.job_id for j, _ in got] == [j.job_id for j, _ in all_jobs][1:]


def test_squeue_json_in_a_layout_the_plugin_does_not_know_is_a_502_that_says_what_to_do():
    """Slurm 23.02+ prints states as lists and numbers as {set, infinite, number}: refused
    with the way out (json: no), not a 500 on every request."""
    doc = {"jobs": [{"job_id": 7, "job_state": ["RUNNING"], "name": "x", "user_name": "alice",
                     "time_limit": {"set": True, "infinite": False, "number": 60},
                     "array_job_id": {"set": True, "infinite": False, "number": 0}}]}
    with pytest.raises(SchedulerRefused, match="json: no"):
        parse.parse_squeue_json(json.dumps(doc))


# ---------------------------------------------------------------- values

@pytest.mark.parametrize("raw,code", [(0, 0), (768, 3), (9, 137), (15, 143), (36608, 143), (None, None)])
def test_decode_wait_status(raw, code):
    assert parse.decode_wait_status(raw) == code


@pytest.mark.parametrize("text,minutes", [
    ("UNLIMITED", None), ("1:00", 1), ("30:00", 30), ("2-00:00:00", 2880), ("3-11:20:00", 5000),
    ("01:30:00", 90), ("5", 5), ("0:30", 1), ("1-2", 1560), (None, None),
    ("INVALID", None), ("Unknown", None), ("-1", None)])
def test_parse_time_limit(text, minutes):
    assert parse.parse_time_limit(text) == minutes


@pytest.mark.parametrize("native,reason,code,state", [
    ("PD", "JobHeldAdmin", None, JobState.HELD), ("PD", "Resources", None, JobState.PENDING),
    ("R", None, None, JobState.RUNNING), ("S", None, None, JobState.SUSPENDED),
    ("CA", None, None, JobState.CANCELLED), ("CD", None, 0, JobState.COMPLETED),
    ("CD", None, 2, JobState.FAILED), ("TO", None, None, JobState.FAILED),
    ("NF", None, None, JobState.FAILED), ("OOM", None, None, JobState.FAILED),
    ("BF", None, None, JobState.FAILED), ("DL", None, None, JobState.FAILED),
    ("PR", None, None, JobState.FAILED), ("F", None, None, JobState.FAILED),
    ("COMPLETING", None, None, JobState.RUNNING), ("RUNNING+COMPLETING", None, None, JobState.RUNNING),
    ("REQUEUE_HOLD", None, None, JobState.HELD), ("", None, None, JobState.UNKNOWN),
    ("WHATEVER", None, None, JobState.UNKNOWN)])
def test_normalize_state(native, reason, code, state):
    assert parse.normalize_state(native, reason, code) is state


@pytest.mark.parametrize("text,hosts", [
    ("vm", ["vm"]), ("", []), ("n[1-3]", ["n1", "n2", "n3"]), ("n[01-03,7]", ["n01", "n02", "n03", "n7"]),
    ("a[1-2],b", ["a1", "a2", "b"]), ("r[1-2]c[1-2]", ["r1c1", "r1c2", "r2c1", "r2c2"])])
def test_expand_hostlist(text, hosts):
    assert parse.expand_hostlist(text) == hosts


@pytest.mark.parametrize("spec,task,inside", [
    ("3-4%2", 3, True), ("3-4%2", 5, False), ("1,3,5-11:2", 7, True), ("1,3,5-11:2", 8, False)])
def test_array_spec_contains(spec, task, inside):
    assert parse.array_spec_contains(spec, task) is inside


def test_output_pattern_rules():
    kw = dict(job_id="12", array_job_id="11", array_task_id="1", user="u", name="n", node="vm", work_dir="/w")
    assert parse.expand_output_pattern("", **kw) == "/w/slurm-11_1.out"
    assert parse.expand_output_pattern("o-%A-%3a-%u-%x-%N-%%.txt", **kw) == "/w/o-11-001-u-n-vm-%.txt"
    assert parse.expand_output_pattern("/abs/%j", **kw) == "/abs/12"
    assert parse.expand_output_pattern("/abs/lit\\%j", **kw) == "/abs/lit%j"


# ---------------------------------------------------------------- hosts, queues, config

def test_hosts_from_sinfo_json_and_scontrol_agree():
    for parser, name in ((parse.parse_sinfo_json, "sinfo_json"), (parse.parse_nodes_oneliner, "scontrol_show_node")):
        [host] = parser(fx(name)["stdout"])
        assert (host.name, host.state, host.cpus, host.memory_mb, host.reason) == ("vm", "ok", 16, 16000, None)
    for parser, name in ((parse.parse_sinfo_json, "sinfo_json_drained"),
                         (parse.parse_nodes_oneliner, "scontrol_show_node_drained")):
        [host] = parser(fx(name)["stdout"])
        assert host.state == "closed"
        assert "DRAIN" in host.native_state
        assert host.reason.startswith("fixture: maintenance a=b")     # free text with '=' kept whole


def test_sinfo_json_node_states_as_lists_are_read_and_odd_layouts_are_a_502():
    """Slurm 23.02+ prints a node's state as a list (["IDLE", "DRAIN"]): it was an
    AttributeError, a 500."""
    doc = json.loads(fx("sinfo_json_drained")["stdout"])
    doc["nodes"][0]["state"], doc["nodes"][0]["state_flags"] = ["IDLE", "DRAIN"], []
    [host] = parse.parse_sinfo_json(json.dumps(doc))
    assert host.state == "closed" and host.native_state == "IDLE+DRAIN"
    doc["nodes"][0]["state"] = {"odd": 1}
    with pytest.raises(SchedulerRefused, match="layout"):
        parse.parse_sinfo_json(json.dumps(doc))
    with pytest.raises(SchedulerRefused, match="no 'nodes'"):            # 24.11: {"sinfo": [...]}
        parse.parse_sinfo_json(json.dumps({"sinfo": [{"nodes": {"nodes": ["vm"]}}], "errors": []}))


@pytest.mark.parametrize("fixture,state,open_,active", [
    ("scontrol_show_partition", "UP", True, True),
    ("scontrol_show_partition_down", "DOWN", True, False),
    ("scontrol_show_partition_drain", "DRAIN", False, True),
    ("scontrol_show_partition_inactive", "INACTIVE", False, False)])
def test_partitions(fixture, state, open_, active):
    queues = {q.name: q for q in parse.parse_partitions(fx(fixture)["stdout"])}
    assert set(queues) == {"debug", "batch"}
    debug, batch = queues["debug"], queues["batch"]
    assert debug.is_default and not batch.is_default
    assert debug.open and debug.active and debug.time_limit_minutes is None
    assert (batch.native_state, batch.open, batch.active) == (state, open_, active)
    assert batch.time_limit_minutes == 2880 and batch.max_slots == 16 and batch.hosts == ["vm"]
    assert parse.partition_state_for(open_, active) == state


def test_config_ping_version_getent():
    config = parse.parse_config(fx("scontrol_show_config")["stdout"])
    assert config["ClusterName"] == "gateway-test" and config["SLURM_VERSION"] == "22.05.8"
    assert parse.parse_ping(fx("scontrol_ping")["stdout"]) == (True, "Slurmctld(primary) at vm is UP")
    ok, words = parse.parse_ping(fx("down_ping")["stdout"])
    assert not ok and "DOWN" in words
    assert parse.parse_version(fx("squeue_version")["stdout"]) == (22, 5)
    assert parse.parse_getent_home(fx("getent_passwd")["stdout"]) == "/home/gwalice"
    assert parse.parse_getent_home(fx("getent_passwd_unknown")["stdout"]) is None


# ---------------------------------------------------------------- sbatch and refusals

def test_sbatch_parsable():
    assert parse.parse_sbatch(fx("sbatch_ok")["stdout"]) == "40"
    assert parse.parse_sbatch("41;cluster\n") == "41"
    with pytest.raises(SchedulerRefused):
        parse.parse_sbatch("")


@pytest.mark.parametrize("fixture,cls", [
    ("sbatch_bad_partition", InvalidInput), ("sbatch_bad_mem", InvalidInput),
    ("sbatch_too_much_mem", InvalidInput), ("sbatch_bad_time", InvalidInput),
    ("sbatch_bad_array", InvalidInput), ("sbatch_not_a_script", InvalidInput),
    ("sbatch_empty_script", InvalidInput), ("sbatch_missing_file", InvalidInput),
    ("sbatch_unknown_option", InvalidInput), ("sbatch_partition_drained", InvalidInput),
    ("sbatch_unknown_user", Forbidden), ("down_sbatch", SchedulerUnavailable)])
def test_sbatch_refusals(fixture, cls):
    d = fx(fixture)
    assert d["returncode"] != 0
    err = parse.refusal(d["stdout"], d["stderr"], input_errors=True)
    assert type(err) is cls, (err, d["stderr"])
    # the scheduler's own words, verbatim
    assert err.msg.splitlines()[0] == d["stderr"].strip().splitlines()[0]


@pytest.mark.parametrize("stderr,cls", [
    ('sbatch: error: Munge encode failed: Failed to access "/run/munge/munge.socket.2": No such file '
     'or directory (retrying ...)', SchedulerUnavailable),
    ("sbatch: error: Munge decode failed: Expired credential", SchedulerUnavailable),
    ("scontrol: error: Slurmctld(primary) at vm is DOWN", SchedulerUnavailable),
    # The words are in users' own names: their input, not an outage (was a 503 with Retry-After).
    ("sbatch: error: Unable to open file /home/alice/munge_results.sh", InvalidInput),
    ("sbatch: error: Unable to open file /home/alice/disk is down/job.sh", InvalidInput),
    # Slurm's words (slurm_errno.c) when the partition's AllowGroups leaves the user out.
    ("sbatch: error: Batch job submission failed: User's group not permitted to use this partition",
     Forbidden)])
def test_outage_words_are_slurms_not_a_users_file_name(stderr, cls):
    err = parse.refusal("", stderr, input_errors=True)
    assert type(err) is cls, err


@pytest.mark.parametrize("fixture,cls", [
    ("suspend_pending", Conflict), ("resume_running", Conflict), ("suspend_finished", Conflict),
    ("hold_finished", Conflict), ("hold_invalid", NotFound), ("requeue_pending", Conflict),
    ("requeue_invalid", NotFound), ("suspend_as_user", Forbidden), ("requeue_denied", Forbidden),
    ("release_admin_hold_as_user", Forbidden), ("node_unknown", NotFound),
    ("node_drain_as_user", Forbidden), ("partition_unknown", NotFound), ("node_resume_again", Conflict)])
def test_scontrol_refusals(fixture, cls):
    d = fx(fixture)
    assert d["returncode"] != 0
    err = parse.refusal(d["stdout"], d["stderr"])
    assert type(err) is cls, (err, d["stderr"])
    assert err.msg == parse.scheduler_words(d["stdout"], d["stderr"])


@pytest.mark.parametrize("fixture,cls", [
    ("scancel_invalid", NotFound), ("scancel_finished", Conflict), ("scancel_denied", Forbidden),
    ("down_scancel", SchedulerUnavailable)])
def test_scancel_says_what_went_wrong_only_in_its_words(fixture, cls):
    d = fx(fixture)
    err = parse.scancel_error(d["stdout"], d["stderr"])
    assert type(err) is cls
    assert "Terminating job" not in err.msg and "Kill job error" in err.msg


def test_scancel_success_is_no_error():
    d = fx("scancel_ok")
    assert d["returncode"] == 0 and parse.scancel_error(d["stdout"], d["stderr"]) is None
    # unknown and finished jobs exit 0 as well: only the words tell
    assert fx("scancel_invalid")["returncode"] == 0 and fx("scancel_finished")["returncode"] == 0


def test_output_slices_fixtures():
    assert fx("stat_output")["stdout"].strip() == "8"      # "out\nerr\n"
    assert fx("dd_output")["stdout"] == "ut"               # offset 1, 2 bytes
    assert "No such file" in fx("stat_missing")["stderr"] and "No such file" in fx("dd_missing")["stderr"]


def test_oneliner_values_with_spaces():
    d = parse.parse_oneliner("NodeName=vm OS=Linux 6.1 #1 SMP  RealMemory=10 Reason=a b=c [root@t]")
    assert d == {"NodeName": "vm", "OS": "Linux 6.1 #1 SMP", "RealMemory": "10", "Reason": "a b=c [root@t]"}


def test_het_job_components_are_listed_by_their_own_job_ids():
    """squeue -O on 22.05 for `sbatch` with `#SBATCH hetjob` (job 628, component 629):
    JobArrayID 628+0 / 628+1, JobID 628 / 629, ArrayJobID 628 / 629. squeue --json lists
    628 and 629; the format path said 628+0 and 628+1, which get_job refused (404)."""
    def record(shown, job_id):
        values = dict.fromkeys(FORMAT_FIELDS, "N/A")
        values.update(JobArrayID=shown, JobID=job_id, ArrayJobID=job_id, Name="het", UserName="gwalice",
                      State="PENDING", Reason="JobHeldUser", SubmitTime="1796580000", NumNodes="1",
                      NumCPUs="1", WorkDir="/tmp")
        return FIELD_SEP.join(values[f] for f in FORMAT_FIELDS) + RECORD_SEP + "\n"
    jobs = parse.parse_squeue_format(record("628+1", "629") + record("628+0", "628"))
    assert sorted((job.job_id, extra["id"], extra["array_job_id"]) for job, extra in jobs) == [
        ("628", "628", None), ("629", "629", None)]


# ---------------------------------------------------------------- changing a job (PATCH)

@pytest.mark.parametrize("fixture,cls", [
    ("update_bad_partition", InvalidInput), ("update_beyond_max_time", InvalidInput),
    ("update_not_yours", Forbidden), ("update_invalid", NotFound),
    ("update_running_partition", Conflict), ("update_running_raise", InvalidInput),
    ("update_finished", Conflict), ("down_scancel", SchedulerUnavailable)])
def test_update_refusals(fixture, cls):
    d = fx(fixture)
    assert d["returncode"] != 0
    err = parse.update_refusal(d["stdout"], d["stderr"], time_limit=fixture.endswith(("max_time", "raise")))
    assert type(err) is cls, (err, d["stderr"])
    assert err.msg.startswith(parse.scheduler_words(d["stdout"], d["stderr"]))


def test_an_unknown_partition_is_the_clients_queue_field_and_a_refused_limit_says_why():
    err = parse.update_refusal("", fx("update_bad_partition")["stderr"])
    assert err.errors == {"queue": ["no such partition"]}
    d = fx("update_beyond_max_time")
    err = parse.update_refusal(d["stdout"], d["stderr"], time_limit=True)
    assert "MaxTime" in err.msg and list(err.errors) == ["timeLimitMinutes"]
    # The same words without a time limit in the change are a plain permission refusal.
    err = parse.update_refusal(d["stdout"], d["stderr"])
    assert type(err) is Forbidden and "MaxTime" not in err.msg
    # A value Slurm calls invalid is the client's input, not the scheduler's fault.
    err = parse.update_refusal("", "Requested time limit is invalid (missing or exceeds some limit) for job 5",
                               time_limit=True)
    assert type(err) is InvalidInput and list(err.errors) == ["timeLimitMinutes"]
