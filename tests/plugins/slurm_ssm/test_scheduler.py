"""The plugin's decisions (who runs what, which error) against a scripted transport that
replays output captured from the real cluster. The real cluster: test_cluster.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.errors import (ConfigError, Conflict, Forbidden, GatewayError, InvalidInput, NotFound,
                            NotImplementedByPlugin, SchedulerRefused, SchedulerTimeout,
                            SchedulerUnavailable)
from gateway.models import JobChange, JobQuery, JobSpec, JobState, User
from gateway.transports import CommandResult, Transport
from gateway_slurm_ssm import commands, make_scheduler

FIXTURES = Path(__file__).parent / "fixtures"


def fx(name):
    d = json.loads((FIXTURES / f"{name}.json").read_text())
    return CommandResult(d["returncode"], d["stdout"].encode(), d["stderr"].encode())


OK = CommandResult(0, b"", b"")


class ScriptedTransport(Transport):
    """Answers each command from ``self.answers`` (first matching argv prefix) and records it."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.answers = [
            (["squeue", "--version"], fx("squeue_version")),
            (["squeue", "--json"], fx("squeue_json")),
            (["env", "SLURM_TIME_FORMAT=%s", "squeue"], fx("squeue_format")),
            (["env", "SLURM_TIME_FORMAT=%s", "scontrol", "--oneliner", "show", "job"], fx("scontrol_show_job_failed")),
            (["scontrol", "ping"], fx("scontrol_ping")),
            (["getent", "passwd"], fx("getent_passwd")),
            (["mktemp"], CommandResult(0, b"/tmp/hpc-gateway-env.abc\n", b"")),
            (["env", "-0"], CommandResult(0, b"HOME=/home/gwbob\x00", b"")),
            (["sbatch"], CommandResult(0, b"77\n", b"")),
            (["sinfo", "--json"], fx("sinfo_json")),
            (["scontrol", "--all", "--oneliner", "show", "partition"], fx("scontrol_show_partition")),
            (["scontrol", "show", "config"], fx("scontrol_show_config")),
        ]

    def answer(self, prefix, result):
        self.answers.insert(0, (prefix, result))

    def run(self, argv, *, stdin=None, timeout=None, as_user=None, env=None):
        argv = list(argv)
        self.calls.append({"argv": argv, "as_user": as_user, "stdin": stdin})
        for prefix, result in self.answers:
            if argv[:len(prefix)] == prefix:
                return result(argv) if callable(result) else result
        return OK

    def argvs(self, head):
        return [c for c in self.calls if c["argv"][0] == head or c["argv"][:3] == ["env", "SLURM_TIME_FORMAT=%s", head]]


@pytest.fixture
def make(tmp_path, monkeypatch):
    made = []

    def _make(**options):
        transport = ScriptedTransport()
        monkeypatch.setattr("gateway_slurm_ssm.scheduler.make_transport", lambda opts: transport)
        options.setdefault("cache_dir", str(tmp_path / "cache"))
        options.setdefault("snapshot_interval", 60)
        options.setdefault("json", "auto")     # the fixtures' squeue --json (the default, "no": below)
        sched = make_scheduler(options)
        made.append(sched)
        return sched, transport
    yield _make
    for sched in made:                         # their watch threads end with them
        sched.close()


ALICE, BOB, ADMIN = User("gwalice"), User("gwbob"), User("gwadmin", is_admin=True)


def test_options_are_validated():
    for bad in ({"run_as": "root"}, {"json": "maybe"}, {"snapshot_interval": -1},
                {"transport": {"type": "telnet"}}, {"allowed_native_options": ["x11"]},
                {"default_work_dir": "relative"}, {"no_such_option": 1}):
        with pytest.raises(ConfigError):
            make_scheduler(bad)


def test_sudo_mode_runs_user_commands_as_the_user_and_the_snapshot_as_the_service(make):
    sched, t = make(run_as="sudo", service_user="slurmsvc", admin_run_as="slurmop")
    assert sched.submit_job(user=ALICE, spec=JobSpec(script="#!/bin/sh\ntrue\n", name="x")) == "77"
    [sbatch] = t.argvs("sbatch")
    assert sbatch["as_user"] == "gwalice" and sbatch["stdin"] == b"#!/bin/sh\ntrue\n"
    assert "--chdir=/home/gwalice" in sbatch["argv"]        # the user's home on the cluster
    sched.list_jobs(user=ALICE, query=JobQuery())
    assert {c["as_user"] for c in t.argvs("squeue")} == {"slurmsvc"}
    FakeSlurm(t)
    sched.control_job(user=ALICE, job_id="30", action="suspend")     # owner: gwalice
    assert {"argv": ["scontrol", "suspend", "30"], "as_user": "slurmop", "stdin": None} in t.calls
    sched.control_job(user=ADMIN, job_id="31", action="resume")      # gwbob's job, by an admin
    assert t.calls[-1]["as_user"] == "slurmop"
    sched.control_job(user=ADMIN, job_id="33", action="release")     # gwalice's held job
    assert t.calls[-1] == {"argv": ["scontrol", "release", "33"], "as_user": "gwalice", "stdin": None}
    sched.control_job(user=ADMIN, job_id="31", action="kill")
    assert t.calls[-1] == {"argv": ["scancel", "--verbose", "31"], "as_user": "gwbob", "stdin": None}


def test_service_mode_runs_everything_as_the_service_account(make):
    sched, t = make(run_as="service", service_user="ec2-user")
    sched.submit_job(user=ALICE, spec=JobSpec(command="hostname"))
    sched.control_job(user=ALICE, job_id="33", action="kill")
    assert {c["as_user"] for c in t.calls} == {"ec2-user"}


@pytest.mark.parametrize("json_mode", ["yes", "no"])
def test_service_mode_jobs_belong_to_the_gateway_user_they_were_submitted_for(make, json_mode):
    """Captured with the service account gwbob (capture_fixtures.py --service): its jobs
    tagged hpc-gateway:carol are carol's; gwalice's job with the same tag stays gwalice's
    (anyone may comment their own jobs), an untagged or otherwise commented one gwbob's."""
    sched, t = make(run_as="service", service_user="gwbob", json=json_mode)
    t.answer(["squeue", "--json"], fx("service_squeue_json"))
    t.answer(["env", "SLURM_TIME_FORMAT=%s", "squeue"], fx("service_squeue_format"))
    owners = {j.name: j.user_name for j in sched.list_jobs(user=ADMIN, query=JobQuery())}
    assert owners == {"for-carol": "carol", "for-dave": "dave", "array-carol": "carol",
                      "forged": "gwalice", "untagged": "gwbob", "other-comment": "gwbob"}
    mine = sched.list_jobs(user=User("carol"), query=JobQuery(user="carol"))
    assert sorted(j.name for j in mine) == ["array-carol", "for-carol"]
    assert sched.get_job(user=User("carol"), job_id="6_2").user_name == "carol"
    squeues = [c["argv"] for c in t.argvs("squeue") if "--version" not in c["argv"]]
    # json: "no" too: a job name holding squeue's separators could forge format-string
    # records that parse cleanly, and under run_as: service their comment decides the owner.
    assert squeues and all("--json" in a for a in squeues), squeues
    # The tag is the scheduler's business: not kept in the snapshot's records.
    assert not any("owner_tag" in extra for _, extra in sched._view().records)


def test_service_mode_reads_format_strings_only_where_json_cannot_be_read(make, caplog):
    """A --json layout the plugin does not read (23.02+) with json: "no" asked for: the
    format strings, and a warning that says what that risks."""
    import json as jsonlib
    sched, t = make(run_as="service", service_user="gwbob", json="no")
    odd = jsonlib.loads(fx("service_squeue_json").stdout)
    for job in odd["jobs"]:
        job["job_state"] = ["PENDING"]                   # 23.02's lists
    t.answer(["squeue", "--json"], CommandResult(0, jsonlib.dumps(odd).encode(), b""))
    t.answer(["env", "SLURM_TIME_FORMAT=%s", "squeue"], fx("service_squeue_format"))
    with caplog.at_level("WARNING", logger="gateway_slurm_ssm"):
        owners = {j.name: j.user_name for j in sched.list_jobs(user=ADMIN, query=JobQuery())}
    assert owners["for-carol"] == "carol"
    assert "could forge another job's record" in caplog.text
    assert t.argvs("squeue")[-1]["argv"][-1].count(",Comment:0") == 1
    # An operator's own json: "yes" keeps its 502 for such a layout.
    strict, t2 = make(run_as="service", service_user="gwbob", json="yes",
                      cache_dir=str(Path(sched.opts["cache_dir"]) / "strict"))
    t2.answer(["squeue", "--json"], CommandResult(0, jsonlib.dumps(odd).encode(), b""))
    with pytest.raises(SchedulerRefused):
        strict.list_jobs(user=ADMIN, query=JobQuery())


def test_service_mode_tags_each_submission_and_keeps_the_comment_option(make):
    sched, t = make(run_as="service", service_user="ec2-user")
    sched.submit_job(user=ALICE, spec=JobSpec(command="hostname", native_options=["--qos=normal"]))
    argv = t.argvs("sbatch")[-1]["argv"]
    assert argv[-3:] == ["--comment=hpc-gateway:gwalice", "--qos=normal", "--wrap=hostname"]
    # An operator's option that takes a value (--container) given bare would take what follows
    # it as its value (the comment, when that came after it; the --wrap now): refused.
    sched.allowed_native |= {"--container"}
    with pytest.raises(InvalidInput) as e:
        sched.submit_job(user=ALICE, spec=JobSpec(command="hostname", native_options=["--container"]))
    assert e.value.errors["nativeOptions"] == ["--container: takes a value, give it as --container=VALUE"]
    sched.submit_job(user=ALICE, spec=JobSpec(command="hostname", native_options=["--container=/srv/oci"]))
    argv = t.argvs("sbatch")[-1]["argv"]
    assert argv.index("--comment=hpc-gateway:gwalice") < argv.index("--container=/srv/oci"), argv
    with pytest.raises(InvalidInput) as e:
        sched.submit_job(user=ALICE, spec=JobSpec(command="hostname", native_options=["--comment=hpc-gateway:bob"]))
    assert "--comment" in e.value.msg
    with pytest.raises(Forbidden):
        sched.submit_job(user=User("bob smith"), spec=JobSpec(command="hostname"))
    assert len(t.argvs("sbatch")) == 2                      # neither refusal ran anything
    # run_as: sudo leaves the comment to the user, and adds none.
    sudo, t2 = make(run_as="sudo", cache_dir=str(Path(sched.opts["cache_dir"]) / "sudo"))
    sudo.submit_job(user=ALICE, spec=JobSpec(command="hostname", native_options=["--comment=mine"]))
    assert [a for a in t2.argvs("sbatch")[-1]["argv"] if a.startswith("--comment")] == ["--comment=mine"]


def test_service_mode_without_a_service_user_asks_who_the_transport_is_once(make, tmp_path):
    sched, t = make(run_as="service", allow_gateway_account=True, json="yes")
    t.answer(["id", "-un"], CommandResult(0, b"gwbob\n", b""))
    t.answer(["squeue", "--json"], fx("service_squeue_json"))
    for _ in range(2):
        sched.snapshot.invalidate()
        jobs = {j.name: j.user_name for j in sched.list_jobs(user=ADMIN, query=JobQuery())}
        assert jobs["for-carol"] == "carol" and jobs["forged"] == "gwalice"
    assert len([c for c in t.calls if c["argv"] == ["id", "-un"]]) == 1


def test_service_mode_without_its_account_name_fails_the_refresh_not_the_owners(make):
    """id -un failing: the tags cannot be read, so that refresh fails (the snapshot keeps
    the previous records) instead of giving every tagged job to the service account."""
    sched, t = make(run_as="service", allow_gateway_account=True, json="yes")
    t.answer(["id", "-un"], CommandResult(1, b"", b"id: cannot find name for user ID 4242\n"))
    t.answer(["squeue", "--json"], fx("service_squeue_json"))
    with pytest.raises(SchedulerUnavailable) as e:
        sched.list_jobs(user=ADMIN, query=JobQuery())
    assert "service_user" in e.value.msg
    t.answer(["id", "-un"], CommandResult(0, b"gwbob\n", b""))
    sched.snapshot.invalidate()
    jobs = {j.name: j.user_name for j in sched.list_jobs(user=ADMIN, query=JobQuery())}
    assert jobs["for-carol"] == "carol"


def test_service_mode_gives_each_user_a_directory_of_their_own(make):
    sched, t = make(run_as="service", service_user="svc")
    t.answer(["getent", "passwd"], CommandResult(0, b"svc:x:990:990::/home/svc:/bin/sh\n", b""))
    sched.submit_job(user=ALICE, spec=JobSpec(command="hostname"))
    sched.submit_job(user=ALICE, spec=JobSpec(command="hostname"))
    assert "--chdir=/home/svc/hpc-gateway/gwalice" in t.argvs("sbatch")[-1]["argv"]
    assert sched.file_transport(user=BOB)[1:] == ("svc", "/home/svc/hpc-gateway/gwbob")
    mkdirs = [c for c in t.calls if c["argv"][0] == "mkdir"]
    assert [c["argv"][-1] for c in mkdirs] == ["/home/svc/hpc-gateway/gwalice", "/home/svc/hpc-gateway/gwbob"]
    assert {c["as_user"] for c in mkdirs} == {"svc"}


def test_sudo_mode_never_runs_as_root(make):
    sched, _ = make(run_as="sudo")
    with pytest.raises(Forbidden):
        sched.submit_job(user=User("root"), spec=JobSpec(command="id"))


def test_environment_travels_in_a_private_file_never_on_the_command_line(make):
    sched, t = make(run_as="sudo")
    sched.submit_job(user=BOB, spec=JobSpec(command="env", environment={"A": "1,2", "B": "x y"}))
    heads = [c["argv"][0] for c in t.calls if c["argv"][0] != "squeue"]
    assert heads == ["getent", "env", "mktemp", "dd", "sbatch", "rm"]
    env, mk, write, sbatch, rm = [c for c in t.calls if c["argv"][0] in ("env", "mktemp", "dd", "sbatch", "rm")]
    assert all(c["as_user"] == "gwbob" for c in (env, mk, write, sbatch, rm))
    assert env["argv"] == ["env", "-0"]
    assert write["argv"][1] == "of=/tmp/hpc-gateway-env.abc"
    assert write["stdin"] == b"HOME=/home/gwbob\x00SLURM_JOB_NAME=wrap\x00A=1,2\x00B=x y\x00"
    assert "--export-file=/tmp/hpc-gateway-env.abc" in sbatch["argv"]
    assert not any("1,2" in a for a in sbatch["argv"])
    assert rm["argv"] == ["rm", "-f", "--", "/tmp/hpc-gateway-env.abc"]


def test_the_env_file_is_removed_when_sbatch_fails(make):
    sched, t = make(run_as="sudo")
    t.answer(["sbatch"], fx("sbatch_bad_partition"))
    with pytest.raises(InvalidInput) as e:
        sched.submit_job(user=ALICE, spec=JobSpec(command="true", queue="nosuch", environment={"A": "1"}))
    assert "invalid partition specified: nosuch" in e.value.msg
    assert t.calls[-1]["argv"][0] == "rm"


def test_bad_input_never_reaches_the_cluster(make):
    sched, t = make(run_as="sudo")
    for spec in (JobSpec(command="x", native_options=["--wrap=id"]), JobSpec(command="x", environment={"A B": "1"}),
                 JobSpec(script_location="relative.sh"), JobSpec(command="x", name="a\x00b"),
                 JobSpec(script_location="s3://bucket-only")):
        with pytest.raises(InvalidInput):
            sched.submit_job(user=ALICE, spec=spec)
    assert not [c for c in t.calls if c["argv"][0] in ("sbatch", "mktemp")]


def test_get_job_list_jobs_and_arrays(make):
    sched, t = make()
    assert sched.get_job(user=ALICE, job_id="28").exit_code == 3
    jobs = sched.list_jobs(user=ALICE, query=JobQuery(user="gwbob"))
    assert {j.name for j in jobs} >= {"suspended", "cancelled"} and {j.user_name for j in jobs} == {"gwbob"}
    held = sched.list_jobs(user=ALICE, query=JobQuery(states=[JobState.HELD]))
    assert {j.name for j in held} == {"held-user", "データ|;$(x)"}
    assert {j.queue for j in sched.list_jobs(user=ALICE, query=JobQuery(queue="batch"))} == {"batch"}
    array = sched.get_job(user=ALICE, job_id="36")
    assert array.state is JobState.RUNNING and array.job_id == "36" and "RUNNING:2" in array.native_state
    assert sched.get_job(user=ALICE, job_id="36_1").state is JobState.RUNNING
    pending_task = sched.get_job(user=ALICE, job_id="36_4")
    assert pending_task.job_id == "36_4" and pending_task.state is JobState.PENDING
    assert sched.get_job(user=ALICE, job_id="38").job_id == "36_1"   # the task's own job id
    for missing in ("99999", "36_9", "abc", "1;id", ""):
        with pytest.raises(NotFound):
            sched.get_job(user=ALICE, job_id=missing)
    assert len([c for c in t.calls if c["argv"][0] == "squeue" and "--json" in c["argv"]]) == 1


def test_a_forged_format_record_is_not_believed_the_refresh_reads_json(make):
    """A job name holding the separators can forge a whole squeue record, e.g. one that
    gives bob's job 28 to mallory: a job id printed twice makes that refresh read
    squeue --json, which separators cannot fool."""
    text = fx("squeue_format").out
    records = [r.lstrip("\n") for r in text.split("\x1e") if r.strip("\n")]
    real = next(r for r in records if r.split("\x1f")[1] == "28")
    fields = real.split("\x1f")
    owner = fields[5]
    fields[5] = "mallory"
    forged = text.rstrip("\n") + "\x1f".join(fields) + "\x1e\n"
    sched, t = make(json="no", run_as="sudo")     # the fixture's fields: run_as: sudo's
    t.answer(["env", "SLURM_TIME_FORMAT=%s", "squeue"], CommandResult(0, forged.encode(), b""))
    job = sched.get_job(user=ADMIN, job_id="28")
    assert job.user_name == owner != "mallory"
    assert [c for c in t.calls if c["argv"][:2] == ["squeue", "--json"]]
    # Without JSON (Slurm before 21.08), the doubled id is left out, not given to either.
    sched2, t2 = make(json="no", run_as="sudo", cache_dir=str(Path(sched.opts["cache_dir"]) / "nojson"))
    t2.answer(["env", "SLURM_TIME_FORMAT=%s", "squeue"], CommandResult(0, forged.encode(), b""))
    t2.answer(["squeue", "--json"], CommandResult(1, b"", b"squeue: unrecognized option '--json'\n"))
    ids = {j.job_id for j in sched2.list_jobs(user=ADMIN, query=JobQuery())}
    assert "28" not in ids and len(ids) > 10
    # With a --json this plugin cannot read (a later Slurm's layout): the same, not a failed
    # refresh (it was a 502 for every read while the forging job was queued).
    sched3, t3 = make(json="no", run_as="sudo", cache_dir=str(Path(sched.opts["cache_dir"]) / "newjson"))
    t3.answer(["env", "SLURM_TIME_FORMAT=%s", "squeue"], CommandResult(0, forged.encode(), b""))
    t3.answer(["squeue", "--json"], CommandResult(0, b'{"jobs": "a layout of tomorrow"}', b""))
    assert {j.job_id for j in sched3.list_jobs(user=ADMIN, query=JobQuery())} == ids


def test_one_unreadable_record_alone_does_not_stop_every_read(make):
    """A cluster user's job named with squeue's separators, alone in the queue: no record of
    the format output can be read. That refresh reads squeue --json instead (it was a 502
    for every read until the job left the queue); only without JSON is it a refusal."""
    garbled = "1\x1f2\x1e\n"
    sched, t = make(json="no")
    t.answer(["env", "SLURM_TIME_FORMAT=%s", "squeue"], CommandResult(0, garbled.encode(), b""))
    assert len(sched.list_jobs(user=ADMIN, query=JobQuery())) == 14      # the JSON fixture's
    sched2, t2 = make(json="no", run_as="sudo", cache_dir=str(Path(sched.opts["cache_dir"]) / "nojson"))
    t2.answer(["env", "SLURM_TIME_FORMAT=%s", "squeue"], CommandResult(0, garbled.encode(), b""))
    t2.answer(["squeue", "--json"], CommandResult(1, b"", b"squeue: unrecognized option '--json'\n"))
    with pytest.raises(SchedulerRefused, match="json is not available"):
        sched2.list_jobs(user=ADMIN, query=JobQuery())


def test_format_strings_when_json_is_off_or_too_old(make):
    sched, t = make(json="no", run_as="sudo")     # the fixture: run_as: sudo's fields
    job = sched.get_job(user=ALICE, job_id="28")
    assert job.state is JobState.FAILED and job.exit_code == 3        # from scontrol show job
    shows = [c for c in t.calls if "show" in c["argv"] and "job" in c["argv"]]
    sched.snapshot.invalidate()
    sched.get_job(user=ALICE, job_id="28")
    assert len([c for c in t.calls if "show" in c["argv"] and "job" in c["argv"]]) == len(shows)  # once per job
    old, t2 = make(json="auto", run_as="sudo", cache_dir=str(Path(sched.opts["cache_dir"]) / "old"))
    t2.answer(["squeue", "--version"], CommandResult(0, b"slurm 20.11.9\n", b""))
    old.list_jobs(user=ALICE, query=JobQuery())
    assert not [c for c in t2.calls if "--json" in c["argv"]]


def test_format_strings_a_requeued_job_that_fails_again_gets_its_new_exit_code(make):
    """The exit code is kept from the previous refresh only for the same end: job 28,
    requeued, failing again with exit 5 between two refreshes, is not shown with its old 3."""
    sched, t = make(json="no", run_as="sudo")
    assert sched.get_job(user=ALICE, job_id="28").exit_code == 3
    end_at = commands.FORMAT_FIELDS.index("EndTime")
    records = fx("squeue_format").out.split("\x1e")
    for i, record in enumerate(records):
        fields = record.split("\x1f")
        if len(fields) > end_at and fields[1] == "28":
            fields[end_at] = str(int(fields[end_at]) + 600)
            records[i] = "\x1f".join(fields)
    t.answer(["env", "SLURM_TIME_FORMAT=%s", "squeue"], CommandResult(0, "\x1e".join(records).encode(), b""))
    again = fx("scontrol_show_job_failed").out.replace("ExitCode=3:0", "ExitCode=5:0")
    t.answer(["env", "SLURM_TIME_FORMAT=%s", "scontrol", "--oneliner", "show", "job"],
             CommandResult(0, again.encode(), b""))
    sched.snapshot.invalidate()
    assert sched.get_job(user=ALICE, job_id="28").exit_code == 5


def test_conflicts_are_decided_on_a_fresh_look(make):
    sched, t = make(run_as="sudo")
    sched.list_jobs(user=ALICE, query=JobQuery())
    for job_id, action in (("33", "resume"), ("30", "release"), ("27", "kill"), ("35", "requeue"),
                           ("31", "suspend"), ("30", "hold")):
        squeues = len(t.argvs("squeue"))
        with pytest.raises(Conflict) as e:
            sched.control_job(user=ALICE, job_id=job_id, action=action)
        assert job_id in e.value.msg
        assert len(t.argvs("squeue")) == squeues + 1     # looked again before saying no
    assert not t.argvs("scontrol") and not t.argvs("scancel")


def _squeue_json_with(job_id: int, **fields) -> CommandResult:
    """The captured squeue --json with one job's fields changed."""
    return _squeue_json_of({job_id: fields})


def _squeue_json_of(changes: dict) -> CommandResult:
    doc = json.loads(fx("squeue_json").out)
    for j in doc["jobs"]:
        j.update(changes.get(j["job_id"], {}))
    return CommandResult(0, json.dumps(doc).encode(), b"")


class FakeSlurm:
    """squeue --json, scontrol suspend/resume/update on top of the capture, with state: what
    Slurm does to a job's state, suspend_time and AdminComment (operators may suspend, only
    ``administrators`` may set AdminComment)."""

    def __init__(self, t, administrators=("slurmop",), clock=1796572343):
        self.changes, self.clock, self.administrators = {}, clock, set(administrators)
        t.answer(["squeue", "--json"], lambda argv: _squeue_json_of(self.changes))
        t.answer(["scontrol", "suspend"], self.suspend)
        t.answer(["scontrol", "resume"], self.resume)
        t.answer(["scontrol", "update"], self.update)
        self.t = t

    TASKS = {"36_1": 38, "36_2": 39, "36_4": 36}      # the capture's array tasks (36_4: below)

    def _job(self, argv):
        job_id = argv[-1].removeprefix("JobId=")
        return self.changes.setdefault(self.TASKS.get(job_id) or int(job_id), {})

    def suspend(self, argv):
        job = self._job(argv)
        if job.get("job_state") in ("COMPLETED", "FAILED", "CANCELLED"):
            # as Slurm 22.05 words it
            return CommandResult(1, b"", f"{argv[-1]}: Job/step already completing or completed\n".encode())
        if job.get("job_state") != "SUSPENDED":    # again: succeeds, keeps the time
            self.clock += 1
            job.update(job_state="SUSPENDED", suspend_time=self.clock)
        return OK

    def resume(self, argv):
        self._job(argv)["job_state"] = "RUNNING"
        return OK

    def refuse_suspend(self, task, words="Requested operation is presently disabled"):
        """From now on Slurm refuses to suspend ``task`` (and does nothing to it)."""
        plain = self.suspend

        def suspend(argv):
            if argv[-1] == task:
                return CommandResult(1, b"", f"{task}: {words}\n".encode())
            return plain(argv)
        self.t.answer(["scontrol", "suspend"], suspend)

    def update(self, argv):
        if self.t.calls[-1]["as_user"] not in self.administrators:
            return CommandResult(1, b"", b"Access/permission denied for job 30\n")
        self._job(argv[:-1])["admin_comment"] = argv[-1].split("=", 1)[1]
        return OK


def test_owners_resume_only_what_they_suspended(make):
    """Slurm lets operators alone suspend and resume; the gateway lets owners do both, but
    not resume a job an administrator or Slurm suspended: an owner's suspension is marked in
    the job's AdminComment (Slurm administrators only can set it), bound to its time."""
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    slurm.changes[30] = {"admin_comment": "site note"}
    sched.control_job(user=ALICE, job_id="30", action="suspend")
    mark = f"hpc-gateway:user-suspend@{slurm.clock} site note"
    assert slurm.changes[30]["admin_comment"] == mark
    assert [c["as_user"] for c in t.calls if c["argv"][0] == "scontrol"] == ["slurmop", "slurmop"]
    sched.control_job(user=ALICE, job_id="30", action="resume")
    assert slurm.changes[30] == {"admin_comment": "site note", "job_state": "RUNNING",
                                 "suspend_time": slurm.clock}
    # An administrator's suspension: not marked, and not the owner's to resume.
    sched.control_job(user=ADMIN, job_id="30", action="suspend")
    assert slurm.changes[30]["admin_comment"] == "site note"
    with pytest.raises(Forbidden):
        sched.control_job(user=ALICE, job_id="30", action="resume")
    # ...nor once the owner "suspends" it again (Slurm says yes and keeps the first time).
    with pytest.raises(Conflict):
        sched.control_job(user=ALICE, job_id="30", action="suspend")
    assert slurm.changes[30]["admin_comment"] == "site note"
    sched.control_job(user=ADMIN, job_id="30", action="resume")
    # Suspended by its owner, then resumed and suspended again by an administrator: the mark
    # is stale (another time), so the owner may not resume.
    sched.control_job(user=ALICE, job_id="30", action="suspend")
    slurm.changes[30].update(job_state="RUNNING")
    slurm.suspend(["scontrol", "suspend", "30"])
    with pytest.raises(Forbidden):
        sched.control_job(user=ALICE, job_id="30", action="resume")
    # An administrator resumes anything, and gives the comment back.
    sched.control_job(user=ADMIN, job_id="30", action="resume")
    assert slurm.changes[30]["admin_comment"] == "site note"
    assert not [c for c in t.calls if c["argv"][:2] == ["scontrol", "resume"] and c["as_user"] != "slurmop"]


def test_an_owner_cannot_take_over_a_suspension_the_snapshot_has_not_seen(make):
    """The snapshot (up to an interval old) says RUNNING, but an operator has just suspended
    the job: Slurm would accept the owner's suspend and keep the operator's time, and a mark
    then would hand the operator's suspension to the owner."""
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    assert sched.get_job(user=ALICE, job_id="30").state is JobState.RUNNING
    slurm.suspend(["scontrol", "suspend", "30"])                    # scontrol, by an operator
    with pytest.raises(Conflict):
        sched.control_job(user=ALICE, job_id="30", action="suspend")
    assert "admin_comment" not in slurm.changes[30]
    with pytest.raises(Forbidden):
        sched.control_job(user=ALICE, job_id="30", action="resume")


def test_an_owners_suspension_that_cannot_be_marked_is_undone(make):
    """admin_run_as an operator but not a Slurm administrator: AdminComment is refused, so
    the suspension is undone and the owner told (it could never have been resumed by them)."""
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t, administrators=())
    with pytest.raises(SchedulerRefused) as e:
        sched.control_job(user=ALICE, job_id="30", action="suspend")
    assert "Slurm administrator" in e.value.msg and "permission denied" in e.value.msg.lower()
    assert slurm.changes[30]["job_state"] == "RUNNING"


def test_an_owner_suspends_and_resumes_an_arrays_running_tasks_one_by_one(make):
    """Array 36: tasks 36_1 (job 38) and 36_2 (39) run, 36_[3-4] pend. Suspending the whole
    array at once fails on the pending tasks after suspending the others."""
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    sched.control_job(user=ALICE, job_id="36", action="suspend")
    assert [c["argv"][-1] for c in t.calls if c["argv"][:2] == ["scontrol", "suspend"]] == ["36_1", "36_2"]
    assert all(slurm.changes[j]["admin_comment"].startswith("hpc-gateway:user-suspend@") for j in (38, 39))
    # An administrator suspends an array's running tasks one by one too.
    admin, t2 = make(run_as="sudo", admin_run_as="slurmop", cache_dir=str(Path(sched.opts["cache_dir"]) / "a"))
    FakeSlurm(t2)
    admin.control_job(user=ADMIN, job_id="36", action="suspend")
    assert [c["argv"] for c in t2.calls if c["argv"][0] == "scontrol"] == [
        ["scontrol", "suspend", "36_1"], ["scontrol", "suspend", "36_2"]]
    # An administrator's suspension of one task is not the owner's to resume; her own is.
    sched.control_job(user=ADMIN, job_id="36_2", action="resume")
    sched.control_job(user=ADMIN, job_id="36_2", action="suspend")
    with pytest.raises(Forbidden):
        sched.control_job(user=ALICE, job_id="36_2", action="resume")
    sched.control_job(user=ALICE, job_id="36_1", action="resume")
    assert slurm.changes[38]["job_state"] == "RUNNING" and slurm.changes[39]["job_state"] == "SUSPENDED"
    assert not slurm.changes[38]["admin_comment"]


def test_an_administrator_suspends_the_tasks_running_now_not_those_of_the_snapshot(make):
    """Since the snapshot, task 36_1 (job 38) has ended and 36_4 has started under the
    array's own id (36): the administrator's suspend acts on 36_2 and 36_4, and a task that
    ends between that look and its own suspend is passed over, not a half-done error."""
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    assert sched.get_job(user=ADMIN, job_id="36_1").state is JobState.RUNNING      # the snapshot
    slurm.changes[38] = {"job_state": "COMPLETED"}
    slurm.changes[36] = {"array_task_id": 4, "array_task_string": "3", "job_state": "RUNNING",
                         "state_reason": "None"}
    sched.control_job(user=ADMIN, job_id="36", action="suspend")
    suspends = [c["argv"][-1] for c in t.calls if c["argv"][:2] == ["scontrol", "suspend"]]
    assert suspends == ["36_2", "36_4"]
    assert slurm.changes[39]["job_state"] == slurm.changes[36]["job_state"] == "SUSPENDED"
    sched.control_job(user=ADMIN, job_id="36", action="resume")
    # 36_2 ends after the look: passed over; 36_4 is still suspended.
    real = slurm.suspend

    def ends_first(argv):
        if argv[-1] == "36_2":
            slurm.changes[39]["job_state"] = "COMPLETED"
        return real(argv)
    t.answer(["scontrol", "suspend"], ends_first)
    sched.control_job(user=ADMIN, job_id="36", action="suspend")
    assert slurm.changes[36]["job_state"] == "SUSPENDED"
    # Nothing of it left running by the time each task is asked: a conflict, saying so.
    slurm.changes[36]["job_state"] = "RUNNING"
    slurm.changes[39]["job_state"] = "RUNNING"
    sched.snapshot.invalidate()

    def all_end(argv):
        slurm.changes[39]["job_state"] = slurm.changes[36]["job_state"] = "COMPLETED"
        return real(argv)
    t.answer(["scontrol", "suspend"], all_end)
    with pytest.raises(Conflict) as e:
        sched.control_job(user=ADMIN, job_id="36", action="suspend")
    assert "36_2, 36_4 are no longer running" in e.value.msg
    # Any other refusal is not passed over: the answer says it and what was suspended before.
    slurm.changes[39]["job_state"] = slurm.changes[36]["job_state"] = "RUNNING"
    sched.snapshot.invalidate()
    slurm.refuse_suspend("36_4")
    with pytest.raises(Conflict) as e:
        sched.control_job(user=ADMIN, job_id="36", action="suspend")
    assert "presently disabled" in e.value.msg and "suspended before that: 36_2" in e.value.msg


def test_an_owners_task_that_ends_before_its_suspend_is_passed_over(make):
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    real = slurm.suspend

    def ends_first(argv):
        if argv[-1] == "36_1":
            slurm.changes.setdefault(38, {})["job_state"] = "COMPLETED"
        return real(argv)
    t.answer(["scontrol", "suspend"], ends_first)
    sched.control_job(user=ALICE, job_id="36", action="suspend")
    assert slurm.changes[39]["job_state"] == "SUSPENDED"
    assert slurm.changes[39]["admin_comment"].startswith("hpc-gateway:user-suspend@")
    assert "admin_comment" not in slurm.changes[38]
    sched.control_job(user=ALICE, job_id="36", action="resume")
    assert slurm.changes[39]["job_state"] == "RUNNING"


def test_the_task_under_the_arrays_own_id_is_addressed_as_a_task(make):
    """The last task of an array to start runs under the array's id (here 36_4 as job 36):
    `scontrol suspend 36` would act on every task, an administrator's suspension of 36_1
    included."""
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    slurm.changes[36] = {"array_task_id": 4, "array_task_string": "", "job_state": "RUNNING",
                         "state_reason": "None"}
    assert sched.get_job(user=ALICE, job_id="36_4").state is JobState.RUNNING
    sched.control_job(user=ALICE, job_id="36_4", action="suspend")
    sched.control_job(user=ALICE, job_id="36_4", action="resume")
    acted = [c["argv"] for c in t.calls if c["argv"][:2] in (["scontrol", "suspend"], ["scontrol", "resume"])]
    assert acted == [["scontrol", "suspend", "36_4"], ["scontrol", "resume", "36_4"]]


def test_an_owners_suspension_that_fails_half_way_is_undone(make):
    """The second task's suspend times out: the first is resumed again and the second tried
    (it may have been suspended all the same); the client hears the timeout."""
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)

    def suspend(argv):
        if argv[-1] == "36_2":
            raise SchedulerTimeout("scontrol suspend 36_2 timed out")
        return slurm.suspend(argv)
    t.answer(["scontrol", "suspend"], suspend)
    with pytest.raises(SchedulerTimeout) as e:
        sched.control_job(user=ALICE, job_id="36", action="suspend")
    assert "was not suspended" in e.value.msg
    assert slurm.changes[38]["job_state"] == "RUNNING"
    assert [c["argv"][-1] for c in t.calls if c["argv"][:2] == ["scontrol", "resume"]] == ["36_1", "36_2"]


def test_a_refused_requeue_keeps_the_owners_mark(make):
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    sched.control_job(user=ALICE, job_id="30", action="suspend")
    mark = slurm.changes[30]["admin_comment"]
    t.answer(["scontrol", "requeue"], CommandResult(1, b"", b"Requeue of job 30 is disabled\n"))
    with pytest.raises(GatewayError):
        sched.control_job(user=ALICE, job_id="30", action="requeue")
    assert slurm.changes[30]["admin_comment"] == mark
    sched.control_job(user=ALICE, job_id="30", action="resume")           # still hers to resume


def test_requeue_of_a_finished_job_slurm_forgot_is_a_conflict_not_404(make):
    """The snapshot carries finished jobs after slurmctld forgets them (MinJobAge): GET shows
    job 27 COMPLETED, so its requeue's "Invalid job id" must not answer "no such job"."""
    sched, t = make(run_as="sudo")
    t.answer(["scontrol", "requeue"], CommandResult(1, b"", b"Requeue of JobId=27 returned an error: "
                                                              b"Invalid job id specified\n"))
    with pytest.raises(Conflict) as e:
        sched.control_job(user=ALICE, job_id="27", action="requeue")
    assert "has ended (COMPLETED)" in e.value.msg and "submit it again" in e.value.msg
    # A job the queue shows running that Slurm then does not know: still 404.
    with pytest.raises(NotFound):
        sched.control_job(user=ALICE, job_id="30", action="requeue")


def test_owners_suspensions_need_squeue_json(make):
    sched, t = make(run_as="sudo", admin_run_as="slurmop", json="no")
    t.answer(["squeue", "--json"], CommandResult(1, b"", b"squeue: unrecognized option '--json'\n"))
    with pytest.raises(NotImplementedByPlugin):
        sched.control_job(user=ALICE, job_id="30", action="suspend")
    assert not [c for c in t.calls if c["argv"][:2] == ["scontrol", "suspend"]]
    sched.control_job(user=ADMIN, job_id="30", action="suspend")          # administrators: as before
    assert t.calls[-1]["argv"] == ["scontrol", "suspend", "30"]


def test_killing_an_owner_suspended_job_gives_its_admin_comment_back(make):
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    slurm.changes[30] = {"admin_comment": "quota=7"}
    sched.control_job(user=ALICE, job_id="30", action="suspend")
    sched.control_job(user=ALICE, job_id="30", action="kill")
    assert slurm.changes[30]["admin_comment"] == "quota=7"
    assert t.calls[-1]["argv"][0] == "scancel"


def test_slurms_refusals_reach_the_client(make):
    sched, t = make(run_as="sudo")
    t.answer(["scancel"], fx("scancel_finished"))
    with pytest.raises(Conflict) as e:
        sched.control_job(user=ALICE, job_id="30", action="kill")
    assert "Job/step already completing or completed" in e.value.msg
    t.answer(["scontrol", "resume"], fx("resume_running"))
    with pytest.raises(Conflict) as e:
        sched.control_job(user=ADMIN, job_id="31", action="resume")
    assert e.value.msg.startswith("Job is not suspended")


@pytest.mark.parametrize("action", ["hold", "requeue", "modify"])
def test_scontrols_unexpected_message_is_503_when_the_controller_is_down(make, action):
    """22.05's scontrol words for a job action while slurmctld is down ('Unexpected message
    received', measured: after 9 s) are also its words for resuming an unknown job: a ping
    tells them apart."""
    sched, t = make(run_as="sudo")
    unexpected = CommandResult(1, b"", b"Unexpected message received for job 30\n")
    t.answer(["scontrol", action if action != "modify" else "update"], unexpected)

    def act():
        if action == "modify":
            sched.modify_job(user=ALICE, job_id="30", change=JobChange(name="renamed"))
        else:
            sched.control_job(user=ALICE, job_id="30" if action == "requeue" else "35", action=action)
    t.answer(["scontrol", "ping"], fx("down_ping"))
    with pytest.raises(SchedulerUnavailable) as e:
        act()
    assert e.value.headers["Retry-After"] and "Unexpected message" in e.value.msg and "DOWN" in e.value.msg
    # The controller answers: Slurm's words stand, a refusal (502), not "try again later".
    t.answer(["scontrol", "ping"], fx("scontrol_ping"))
    sched._controller_down = False
    with pytest.raises(SchedulerRefused) as e:
        act()
    assert type(e.value) is SchedulerRefused and "Unexpected message" in e.value.msg
    # A ping that fails otherwise says nothing about the controller: the refusal stands, and
    # no hold is put on the next commands.
    t.answer(["scontrol", "ping"], CommandResult(1, b"", b"sudo: a password is required\n"))
    with pytest.raises(SchedulerRefused) as e:
        act()
    assert type(e.value) is SchedulerRefused and not sched._controller_down


def test_output_reads_a_slice_as_the_owner(make):
    sched, t = make(run_as="sudo")
    t.answer(["stat"], fx("stat_output"))
    t.answer(["dd"], fx("dd_output"))
    out = sched.job_output(user=ADMIN, job_id="27", stream="stdout", offset=1, limit=2)
    assert (out.data, out.offset, out.size, out.path) == (b"ut", 1, 8, "/tmp/fx-27.out")
    stat, dd = t.calls[-2:]
    assert stat["as_user"] == dd["as_user"] == "gwalice"
    assert dd["argv"][1] == "if=/tmp/fx-27.out" and "skip=1" in dd["argv"] and "count=2" in dd["argv"]
    t.answer(["stat"], fx("stat_missing"))
    out = sched.job_output(user=ALICE, job_id="35", stream="stderr", offset=0, limit=10)
    assert out.data == b"" and out.size == 0


def test_controller_down_is_503_and_then_answered_by_ping(make):
    sched, t = make(snapshot_interval=0.01)
    t.answer(["squeue", "--json"], fx("down_squeue_json"))
    t.answer(["scontrol", "ping"], fx("down_ping"))
    with pytest.raises(SchedulerUnavailable) as e:
        sched.list_jobs(user=ALICE, query=JobQuery())
    assert "Retry-After" in e.value.headers
    squeues = len(t.argvs("squeue"))
    import time
    time.sleep(0.02)
    with pytest.raises(SchedulerUnavailable) as e:
        sched.get_job(user=ALICE, job_id="30")
    assert "DOWN" in e.value.msg
    assert len(t.argvs("squeue")) == squeues           # ping said DOWN: no 9-second squeue
    health = sched.health()
    assert not health.ok and "DOWN" in health.detail


@pytest.mark.parametrize("asked_by", ["health", "snapshot"])
def test_a_ping_that_sees_the_controller_back_ends_the_down_hold_at_once(make, asked_by):
    """Once DOWN was seen, commands are refused for down_hold seconds without asking again.
    But any ping that sees the controller UP (/health's, the snapshot's) ends that at once:
    no request may get a 503 on an old DOWN after the gateway has seen it back."""
    import time
    sched, t = make(snapshot_interval=0.01, down_probe_after=0.05, down_hold=30)
    slow = [True]
    replay = t.run

    def run(argv, **kw):
        if slow[0] and "squeue" in argv:
            time.sleep(0.3)                    # squeue retrying an unreachable controller
        return replay(argv, **kw)
    t.run = run
    t.answer(["squeue", "--json"], fx("down_squeue_json"))
    t.answer(["scontrol", "ping"], fx("down_ping"))
    with pytest.raises(SchedulerUnavailable):
        sched.list_jobs(user=ALICE, query=JobQuery())
    assert sched._controller_down                       # the fail-fast ping saw DOWN: held
    # The controller is back.
    slow[0] = False
    t.answer(["squeue", "--json"], fx("squeue_json"))
    t.answer(["scontrol", "ping"], fx("scontrol_ping"))
    time.sleep(0.02)
    if asked_by == "health":
        assert sched.health().ok
    assert {j.job_id for j in sched.list_jobs(user=ALICE, query=JobQuery())}
    assert not sched._controller_down


def test_a_ping_that_fails_otherwise_puts_no_hold(make):
    """Only an explicit DOWN holds controller commands at 503. A ping that fails for another
    reason (sudo's refusal) says nothing about the controller: /health is not ok, but the
    next request runs its command; after an outage the snapshot leaves it to squeue."""
    sched, t = make(snapshot_interval=0.01)
    t.answer(["scontrol", "ping"], CommandResult(1, b"", b"sudo: a password is required\n"))
    health = sched.health()
    assert not health.ok and "sudo" in health.detail
    assert not sched._controller_down
    assert sched.get_job(user=ALICE, job_id="30").job_id == "30"
    # After an outage (the last refresh failed on a DOWN), such a ping lets squeue answer.
    t.answer(["squeue", "--json"], fx("down_squeue_json"))
    t.answer(["scontrol", "ping"], fx("down_ping"))
    import time
    time.sleep(0.02)
    with pytest.raises(SchedulerUnavailable):
        sched.list_jobs(user=ALICE, query=JobQuery())
    assert sched._ping(1.0)[0] is False and sched._controller_down    # as the fail-fast ping does
    sched._down_until = 0                      # its hold is over
    t.answer(["squeue", "--json"], fx("squeue_json"))
    t.answer(["scontrol", "ping"], CommandResult(1, b"", b"sudo: a password is required\n"))
    time.sleep(0.02)
    calls = len(t.calls)
    assert {j.job_id for j in sched.list_jobs(user=ALICE, query=JobQuery())}
    assert [c["argv"][:2] for c in t.calls[calls:]][-2:] == [["scontrol", "ping"], ["squeue", "--json"]]
    assert not sched._controller_down          # squeue read the queue: no ping before each command


def test_service_mode_hosts_follow_the_operators_json_choice(make):
    """run_as: service reads squeue --json whatever json says; sinfo, whose --json layout
    changes again on newer Slurm, keeps the operator's "no" (scontrol show node)."""
    sched, t = make(run_as="service", service_user="gwbob", json="no")
    t.answer(["squeue", "--json"], fx("service_squeue_json"))
    t.answer(["scontrol", "--oneliner", "show", "node"], fx("scontrol_show_node"))
    [host] = sched.list_hosts()
    assert host.name == "vm"
    assert not t.argvs("sinfo") and t.argvs("scontrol")[0]["argv"][:3] == ["scontrol", "--oneliner", "show"]


def test_hosts_queues_users_cluster(make):
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    [host] = sched.list_hosts()
    assert host.name == "vm" and host.state == "ok" and host.running >= 4 and host.suspended == 1
    queues = {q.name: q for q in sched.list_queues()}
    assert queues["debug"].is_default and queues["batch"].running == 1
    sched.control_queue(user=ADMIN, queue="batch", action="close")
    assert t.calls[-1] == {"argv": ["scontrol", "update", "partitionname=batch", "state=DRAIN"],
                           "as_user": "slurmop", "stdin": None}
    sched.control_queue(user=ADMIN, queue="batch", action="inactivate")
    assert t.calls[-1]["argv"][-1] == "state=DOWN"
    sched.control_host(user=ADMIN, host="vm", action="close")
    assert t.calls[-1]["argv"][:4] == ["scontrol", "update", "nodename=vm", "state=drain"]
    assert "gwadmin" in t.calls[-1]["argv"][4]
    for call in (lambda: sched.control_host(user=ADMIN, host="nosuch", action="close"),
                 lambda: sched.control_queue(user=ADMIN, queue="nosuch", action="open")):
        with pytest.raises(NotFound):
            call()
    users = {u.name: u for u in sched.list_users()}
    assert users["gwbob"].suspended == 1 and users["gwalice"].pending >= 2
    info = sched.cluster_info()
    assert (info.name, info.version, info.master, info.hosts, info.cpus, info.queues) == (
        "gateway-test", "22.05.8", "vm", 1, 16, 2)
    assert info.jobs["RUNNING"] >= 4
    assert sched.health().ok


def test_file_transport_and_read_user_file_run_as_the_users_account(make):
    sched, t = make(run_as="sudo")
    transport, account = sched.file_transport(user=ALICE)
    assert transport is t and account == "gwalice"
    t.answer(["dd"], CommandResult(0, b'{"display": 12}', b""))
    assert sched.read_user_file(user=ALICE, path="~/.hpc-gateway/vis/5.json", limit=4096) == b'{"display": 12}'
    assert t.calls[-1]["as_user"] == "gwalice" and t.calls[-1]["argv"][1] == "if=/home/gwalice/.hpc-gateway/vis/5.json"
    t.answer(["dd"], fx("dd_missing"))
    assert sched.read_user_file(user=ALICE, path="/tmp/nothing", limit=10) is None
    with pytest.raises(InvalidInput):
        sched.read_user_file(user=ALICE, path="relative", limit=10)
    service, t2 = make(run_as="service", service_user="svc", cache_dir=str(Path(sched.opts["cache_dir"]) / "s"))
    assert service.file_transport(user=ALICE)[1] == "svc"


def test_service_mode_never_runs_jobs_as_the_gateway_itself(tmp_path):
    """run_as: service through the local transport with no other service_user: every user's
    jobs would run as the gateway's own account and could read its secret key (and make an
    administrator's token). Refused at start, unless allowed explicitly."""
    import os
    import pwd
    me = pwd.getpwuid(os.geteuid()).pw_name
    base = {"transport": {"type": "local"}, "run_as": "service", "cache_dir": str(tmp_path / "c")}
    for refused in ({}, {"service_user": me}):
        with pytest.raises(ConfigError, match="gateway's own account"):
            make_scheduler({**base, **refused})
    for accepted in ({"service_user": "gwbob"}, {"allow_gateway_account": True}, {"run_as": "sudo"},
                     {"transport": {"type": "ssh", "host": "head"}}):
        make_scheduler({**base, **accepted}).close()


def test_the_snapshot_is_refreshed_while_nobody_reads(make):
    """A job that ended while nobody polled left squeue after MinJobAge (300 s) before any
    read refreshed the snapshot, and was then a 404. While the plugin lives, a background
    refresh keeps the snapshot no older than watch_seconds; close() ends it."""
    import time

    def listings():
        return len([c for c in t.argvs("squeue") if "--version" not in c["argv"]])

    sched, t = make(watch_seconds=0.4)
    time.sleep(1.5)                                # no read at all
    refreshed = listings()
    assert refreshed >= 2, t.calls
    sched.close()
    time.sleep(1.0)
    assert listings() <= refreshed + 1               # (one may have been under way)
    quiet, t = make(watch_seconds=0)
    time.sleep(1.0)
    assert listings() == 0
    quiet.close()


def test_reads_tell_the_transport_they_are_safe_to_repeat(make):
    """Over SSH a connection lost while a command ran is an unknown outcome (504): sbatch
    may have submitted. Reads say they may be repeated, so theirs is a 503 to retry."""
    sched, t = make(run_as="sudo")
    said = []
    t.tells_retry_safe = True
    plain = t.run

    def run(argv, retry_safe=False, **kw):
        said.append((list(argv)[0], retry_safe))
        return plain(argv, **kw)
    t.run = run
    sched.list_jobs(user=ALICE, query=JobQuery())
    sched.submit_job(user=ALICE, spec=JobSpec(script="#!/bin/sh\ntrue\n", name="x"))
    sched.control_job(user=ALICE, job_id="30", action="kill")
    assert ("squeue", True) in said
    assert ("sbatch", False) in said and ("scancel", False) in said


def test_an_owners_suspend_refused_for_a_task_does_not_resume_that_task(make):
    """Slurm refused to suspend 36_2 (it did nothing): the undo resumes 36_1, which this call
    suspended, and leaves 36_2 alone (it may be an administrator's suspension)."""
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    FakeSlurm(t).refuse_suspend("36_2")
    with pytest.raises(Conflict) as e:
        sched.control_job(user=ALICE, job_id="36", action="suspend")
    assert "presently disabled" in e.value.msg
    resumed = [c["argv"][-1] for c in t.calls if c["argv"][:2] == ["scontrol", "resume"]]
    assert resumed == ["36_1"]


# ---------------------------------------------------------------- PATCH /jobs/{id}

def _updates(t):
    return [c for c in t.calls if c["argv"][:2] == ["scontrol", "update"]]


@pytest.fixture
def changing(make):
    """run_as: service with an operator's power, as SSM's root: Slurm would take any limit from
    it, so the gateway's own checks are all that hold users to MaxTime."""
    sched, t = make(run_as="service", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    t.answer(["scontrol", "update"], OK)
    t.answer(["scontrol", "show", "partition"], fx("scontrol_show_partition"))
    return sched, t, slurm


def test_a_users_limit_is_held_to_maxtime_whatever_the_account_may(changing):
    from gateway.models import JobChange
    sched, t, slurm = changing
    alice = User("gwalice")
    # 35 waits in debug (no MaxTime): moving to batch (2880) with 5000, or without a limit, is refused.
    for change in (JobChange(queue="batch", time_limit_minutes=5000), JobChange(queue="batch")):
        with pytest.raises(InvalidInput):
            sched.modify_job(user=alice, job_id="35", change=change)
    # Listed in two partitions (a job_submit plugin's doing): the least MaxTime binds.
    slurm.changes[33] = {"partition": "debug,batch"}
    with pytest.raises(InvalidInput):
        sched.modify_job(user=alice, job_id="33", change=JobChange(time_limit_minutes=5000))
    assert _updates(t) == []
    sched.modify_job(user=alice, job_id="35", change=JobChange(queue="batch", time_limit_minutes=2880))
    assert [c["argv"][2:] for c in _updates(t)] == [["JobId=35", "Partition=batch", "TimeLimit=2880"]]
    # An administrator may raise a started job's limit beyond MaxTime, as admin_run_as (30
    # runs in batch with 30 minutes); a rename needs no operator.
    with pytest.raises(Forbidden):
        sched.modify_job(user=alice, job_id="30", change=JobChange(time_limit_minutes=31))
    sched.modify_job(user=ADMIN, job_id="30", change=JobChange(time_limit_minutes=5000))
    sched.modify_job(user=ADMIN, job_id="35", change=JobChange(name="n"))
    assert [c["as_user"] for c in _updates(t)[1:]] == ["slurmop", None]


def test_an_arrays_limit_is_raised_against_its_started_tasks(changing):
    """Tasks may have limits of their own (one changed alone): the array's summary shows one
    task's; a user's raise is judged against the least of the started tasks'."""
    from gateway.models import JobChange
    sched, t, slurm = changing
    slurm.changes.update({38: {"time_limit": 600}, 39: {"time_limit": 30}, 36: {"time_limit": 600}})
    with pytest.raises(Forbidden):
        sched.modify_job(user=User("gwalice"), job_id="36", change=JobChange(time_limit_minutes=500))
    assert _updates(t) == []
    sched.modify_job(user=User("gwalice"), job_id="36", change=JobChange(time_limit_minutes=20))
    assert [c["argv"][2:] for c in _updates(t)] == [["JobId=36", "TimeLimit=20"]]


def _refuse_update_after(slurm, t, words, **job_changes):
    """scontrol update: the job changes meanwhile (``job_changes``), then Slurm refuses."""
    def update(argv):
        job_id = int(argv[2].removeprefix("JobId="))
        slurm.changes.setdefault(job_id, {}).update(job_changes)
        return CommandResult(1, b"", f"{words} for job {job_id}\n".encode())
    t.answer(["scontrol", "update"], update)


def test_a_job_that_starts_between_the_look_and_the_update_gets_the_gateways_own_answer(make):
    """The fresh look saw 35 waiting; it started before `scontrol update` (seconds over SSM),
    and Slurm refuses the owner's raise with 'Access/permission denied'. That is no invalid
    input (422) but the rule on started jobs: 403, as a look a moment later would have said."""
    from gateway.models import JobChange
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    slurm.changes[35] = {"time_limit": 60}
    t.answer(["scontrol", "show", "partition"], fx("scontrol_show_partition"))
    _refuse_update_after(slurm, t, "Access/permission denied", job_state="RUNNING")
    with pytest.raises(Forbidden) as e:
        sched.modify_job(user=ALICE, job_id="35", change=JobChange(time_limit_minutes=5000))
    assert "only an administrator may raise" in e.value.msg
    assert [c["as_user"] for c in _updates(t)] == ["gwalice"]
    # Still waiting, and refused all the same (a QOS's MaxWall): the limit is refused, 422.
    slurm.changes[35]["job_state"] = "PENDING"
    _refuse_update_after(slurm, t, "Access/permission denied")
    with pytest.raises(InvalidInput) as e:
        sched.modify_job(user=ALICE, job_id="35", change=JobChange(time_limit_minutes=5000))
    assert e.value.errors == {"timeLimitMinutes": ["refused by Slurm"]}


def test_an_administrators_raise_refused_to_admin_run_as_is_a_configuration_fault(make):
    """admin_run_as that is no Slurm operator: Slurm denies the raise. Not the client's input
    (422): the gateway's configuration (502), named."""
    from gateway.models import JobChange
    sched, t = make(run_as="sudo", admin_run_as="notop")
    slurm = FakeSlurm(t)
    _refuse_update_after(slurm, t, "Access/permission denied")
    with pytest.raises(SchedulerRefused) as e:
        sched.modify_job(user=ADMIN, job_id="30", change=JobChange(time_limit_minutes=5000))
    assert e.value.status == 502 and "admin_run_as (notop)" in e.value.msg
    assert [c["as_user"] for c in _updates(t)] == ["notop"]


def test_a_refused_update_stays_refused_when_the_second_look_fails(make):
    """Slurm refused (final); the look that would tell whether the job started meanwhile
    fails (the controller went away): the answer is still the refusal, not a 503 inviting
    the client to send the change again."""
    from gateway.models import JobChange
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    slurm.changes[35] = {"time_limit": 60}
    t.answer(["scontrol", "show", "partition"], fx("scontrol_show_partition"))

    def update(argv):
        t.answer(["squeue", "--json"], CommandResult(1, b"", b"slurm_load_jobs error: Unable to contact slurm controller\n"))
        t.answer(["scontrol", "ping"], CommandResult(1, b"Slurmctld(primary) at n1 is DOWN\n", b""))
        return CommandResult(1, b"", b"Access/permission denied for job 35\n")
    t.answer(["scontrol", "update"], update)
    with pytest.raises(InvalidInput) as e:
        sched.modify_job(user=ALICE, job_id="35", change=JobChange(time_limit_minutes=5000))
    assert e.value.errors == {"timeLimitMinutes": ["refused by Slurm"]}


def test_an_administrators_move_and_raise_refused_keeps_slurms_words(make):
    """A move with the raise: the partition may refuse operators too (RootOnly, AllowGroups),
    so the denial is Slurm's (403), not a diagnosis of admin_run_as."""
    from gateway.models import JobChange
    sched, t = make(run_as="sudo", admin_run_as="slurmop")
    slurm = FakeSlurm(t)
    slurm.changes[35] = {"time_limit": 60}
    _refuse_update_after(slurm, t, "Access/permission denied")
    with pytest.raises(Forbidden) as e:
        sched.modify_job(user=ADMIN, job_id="35", change=JobChange(queue="batch", time_limit_minutes=5000))
    assert "admin_run_as" not in e.value.msg and "Access/permission denied" in e.value.msg


def test_a_started_array_task_decides_the_second_look_too(changing):
    """The array's summary shows the first task's limit (600); a started task has 30. The
    look after Slurm's denial judges the raise to 500 as the first look does: a raise, 403."""
    from gateway.models import JobChange
    sched, t, slurm = changing
    slurm.changes.update({38: {"time_limit": 600}, 39: {"time_limit": 600}, 36: {"time_limit": 600}})
    calls = []

    def update(argv):
        calls.append(argv)
        slurm.changes[39]["time_limit"] = 30           # changed alone meanwhile, by an operator
        return CommandResult(1, b"", b"Access/permission denied for job 36\n")
    t.answer(["scontrol", "update"], update)
    with pytest.raises(Forbidden):
        sched.modify_job(user=User("gwalice"), job_id="36", change=JobChange(time_limit_minutes=500))
    assert len(calls) == 1


def test_an_array_without_a_limit_of_its_own_is_judged_by_its_started_tasks(changing):
    """The summary shows no limit (UNLIMITED), a started task has 30 minutes: 500 is a raise
    for that task (403), not the lowering it would be of an unlimited job. The shared service
    account (an operator, as SSM's root) would apply it."""
    from gateway.models import JobChange
    sched, t, slurm = changing
    slurm.changes.update({38: {"time_limit": None}, 39: {"time_limit": 30}, 36: {"time_limit": None}})
    with pytest.raises(Forbidden):
        sched.modify_job(user=User("gwalice"), job_id="36", change=JobChange(time_limit_minutes=500))
    assert _updates(t) == []


def test_an_administrators_raise_of_a_started_task_runs_as_admin_run_as(changing):
    """The summary says 600, a started task has 30: an administrator's 500 raises that task's
    limit, which needs an operator (admin_run_as), not the owner's account."""
    from gateway.models import JobChange
    sched, t, slurm = changing
    slurm.changes.update({38: {"time_limit": 600}, 39: {"time_limit": 30}, 36: {"time_limit": 600}})
    sched.modify_job(user=ADMIN, job_id="36", change=JobChange(time_limit_minutes=500))
    assert [(c["argv"][2:], c["as_user"]) for c in _updates(t)] == [(["JobId=36", "TimeLimit=500"], "slurmop")]
