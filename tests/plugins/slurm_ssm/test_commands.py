"""The command builders: every JobSpec field mapped, every client string kept inside one argument."""
from __future__ import annotations

import pytest

from gateway.errors import InvalidInput
from gateway.models import JobSpec
from gateway_slurm_ssm import commands

ALLOWED = commands.DEFAULT_NATIVE_OPTIONS


def build(**kw):
    kw.setdefault("script", "#!/bin/sh\ntrue\n")
    return commands.sbatch(JobSpec(**kw), default_work_dir="/home/u", allowed_native=ALLOWED)


def test_every_field_maps_to_one_sbatch_option():
    argv = commands.sbatch(JobSpec(
        command="echo hi", name="n", queue="batch", nodes=2, cpus=8, cpus_per_task=2, memory_mb=512,
        time_limit_minutes=90, work_dir="/data", stdout="o-%j.out", stderr="e-%j.err", array="1-10%2",
        dependency="afterok:5", hold=True, native_options=["--exclusive", "--mail-type=END,FAIL"]),
        default_work_dir="/home/u", allowed_native=ALLOWED, export_file="/tmp/env.1")
    assert argv == ["sbatch", "--parsable", "--chdir=/data", "--job-name=n", "--partition=batch",
                    "--nodes=2", "--ntasks=4", "--cpus-per-task=2", "--mem=512M", "--time=90",
                    "--output=o-%j.out", "--error=e-%j.err", "--array=1-10%2", "--dependency=afterok:5",
                    "--hold", "--export=ALL", "--export-file=/tmp/env.1", "--exclusive",
                    "--mail-type=END,FAIL", "--wrap=echo hi"]


def test_cpus_alone_are_tasks_and_cpus_per_task_alone_stays():
    assert "--ntasks=3" in build(cpus=3)
    argv = build(cpus_per_task=4)
    assert "--cpus-per-task=4" in argv and not any(a.startswith("--ntasks") for a in argv)


def test_script_body_goes_to_stdin_and_a_script_path_after_double_dash():
    assert build()[-1] == "--chdir=/home/u"           # nothing after the options: stdin
    argv = commands.sbatch(JobSpec(script_location="--wrap=touch /tmp/x"), default_work_dir="/w",
                           allowed_native=ALLOWED, script_path="--wrap=touch /tmp/x")
    assert argv[-2:] == ["--", "--wrap=touch /tmp/x"]


@pytest.mark.parametrize("field", ["name", "work_dir", "stdout", "stderr", "dependency", "array"])
def test_hostile_strings_stay_inside_their_option(field):
    value = "/--x ;$(touch /tmp/p)`id`\n--wrap=evil ü" if field == "work_dir" else "--x ;$(touch /tmp/p)\n--wrap=evil ü"
    argv = build(**{field: value})
    hits = [a for a in argv if value in a]
    assert len(hits) == 1 and hits[0].startswith("--") and hits[0].endswith(value)
    assert "--wrap=evil ü" not in argv


def test_nul_anywhere_is_refused_before_anything_runs():
    for field in ("name", "work_dir", "stdout", "command", "dependency"):
        kw = {field: "/a\x00b"}
        if field == "command":
            kw["script"] = None
        with pytest.raises(InvalidInput) as e:
            build(**kw)
        assert e.value.errors


def test_work_dir_must_be_absolute_and_queue_a_partition_name():
    with pytest.raises(InvalidInput):
        build(work_dir="relative/dir")
    with pytest.raises(InvalidInput):
        build(queue="debug --wrap=x")


def test_cpus_must_divide_by_cpus_per_task():
    with pytest.raises(InvalidInput):
        build(cpus=5, cpus_per_task=2)


def test_native_options_allow_list():
    assert commands.check_native_options(["--exclusive", "--qos=normal", "--comment=a b,c"], ALLOWED) == [
        "--exclusive", "--qos=normal", "--comment=a b,c"]
    for bad, named in ((["--wrap=touch /tmp/x"], "--wrap"), (["--export=ALL,LD_PRELOAD=/x"], "--export"),
                       (["--uid=0"], "--uid"), (["--wra=x"], "--wra"), (["--parsable"], "--parsable"),
                       (["--qos", "normal"], "normal"), (["-p", "debug"], "-p"), ([";id"], ";id"),
                       (["--qos=a\x00b"], "--qos")):
        with pytest.raises(InvalidInput) as e:
            commands.check_native_options(bad, ALLOWED)
        assert named in e.value.msg, (bad, e.value.msg)
        assert e.value.errors["nativeOptions"]


@pytest.mark.parametrize("bare", ["--mail-user", "--account", "--qos", "--begin"])
def test_a_native_option_that_takes_a_value_must_carry_it(bare):
    """Given bare, sbatch would take the next argument as its value (--mail-user swallowing
    the gateway's own --wrap=..., --account the next native option)."""
    with pytest.raises(InvalidInput) as e:
        commands.check_native_options([bare, "--qos=high"], ALLOWED)
    assert e.value.errors["nativeOptions"] == [f"{bare}: takes a value, give it as {bare}=VALUE"]
    assert commands.check_native_options(["--exclusive", "--requeue", "--nice", f"{bare}=x"], ALLOWED)


def test_an_operators_option_given_bare_is_a_flag_only_if_sbatch_takes_it_so():
    """The allow-list an operator widens: a bare --container (which takes a value) would
    swallow the gateway's --wrap=... after it and sbatch would find no script; --test-only
    (a flag) may come bare. Which options sbatch 22.05 takes without a value was measured
    (commands.NATIVE_FLAGS)."""
    allowed = ALLOWED | {"--container", "--test-only", "--x-site-option"}
    for bare in ("--container", "--x-site-option"):
        with pytest.raises(InvalidInput) as e:
            commands.check_native_options([bare], allowed)
        assert e.value.errors["nativeOptions"] == [f"{bare}: takes a value, give it as {bare}=VALUE"]
    assert commands.check_native_options(["--test-only", "--container=/srv/oci"], allowed) == \
        ["--test-only", "--container=/srv/oci"]
    argv = commands.sbatch(JobSpec(command="hostname", native_options=["--test-only"]),
                           default_work_dir="/home/u", allowed_native=allowed)
    assert argv[-2:] == ["--test-only", "--wrap=hostname"]


def test_node_lists_are_host_names_not_files():
    """sbatch reads --nodelist/--exclude from a file when the value holds a '/': a file on
    the submit host, read as the account that submits (whose words an error would echo)."""
    assert commands.check_native_options(["--nodelist=vm,node[1-3]", "--exclude=node4"], ALLOWED)
    for opt in ("--nodelist=/etc/shadow", "--exclude=../x/hosts"):
        with pytest.raises(InvalidInput, match="nativeOptions not allowed"):
            commands.check_native_options([opt], ALLOWED)


def test_native_options_list_can_be_extended():
    assert commands.check_native_options(["--container=/srv/oci"], ALLOWED | {"--container"}) == ["--container=/srv/oci"]


def test_environment_is_checked():
    assert commands.check_environment({"A": "1,2", "B": None}) == {"A": "1,2", "B": ""}
    for bad in ({"A B": "1"}, {"1A": "1"}, {"A=B": "1"}, {"--x": "1"}, {"A": "a\x00b"}, {"Ü": "1"}, {"": "1"}):
        with pytest.raises(InvalidInput) as e:
            commands.check_environment(bad)
        assert e.value.errors["environment"]


def test_export_file_is_what_export_all_would_send_plus_the_clients_variables():
    base = b"HOME=/home/u\x00PATH=/bin\x00MULTI=a\nb=c\x00A=old\x00"
    data = commands.export_file(base, {"A": "1,2", "B": "x\ny", "D": "$(id);`id`"}, "job, 1")
    assert data.split(b"\x00") == [b"HOME=/home/u", b"PATH=/bin", b"MULTI=a\nb=c", b"A=1,2",
                                    b"SLURM_JOB_NAME=job, 1", b"B=x\ny", b"D=$(id);`id`", b""]


def test_default_job_names_are_sbatchs():
    assert commands.default_job_name(JobSpec(command="x")) == "wrap"
    assert commands.default_job_name(JobSpec(script="x")) == "sbatch"
    assert commands.default_job_name(JobSpec(script_location="/a/b/run.sh")) == "run.sh"
    assert commands.default_job_name(JobSpec(script_location="s3://b/k.sh")) == "sbatch"
    assert commands.default_job_name(JobSpec(command="x", name="n")) == "n"


@pytest.mark.parametrize("job_id,ok", [
    ("1", True), ("123_4", True), ("36_[3-4%2]", True), ("0", False), ("abc", False), ("1 2", False),
    ("-1", False), ("1;id", False), ("1_", False), ("", False), ("1\n2", False)])
def test_job_ids(job_id, ok):
    assert commands.valid_job_id(job_id) is ok


def test_read_commands():
    assert commands.squeue_json() == ["squeue", "--json", "--all", "--states=all"]
    fmt = commands.squeue_format()
    assert fmt[:2] == ["env", "SLURM_TIME_FORMAT=%s"] and fmt[-1].count(commands.FIELD_SEP) == len(commands.FORMAT_FIELDS) - 1
    assert commands.read_bytes("/p", 5, 10) == ["dd", "if=/p", "bs=65536", "iflag=skip_bytes,count_bytes",
                                                "skip=5", "count=10", "status=none"]
    assert commands.scancel("5") == ["scancel", "--verbose", "5"]
    assert commands.update_node("vm", "close", reason="r") == ["scontrol", "update", "nodename=vm", "state=drain", "reason=r"]
    assert commands.update_partition("batch", "DRAIN") == ["scontrol", "update", "partitionname=batch", "state=DRAIN"]
    with pytest.raises(ValueError):
        commands.job_action("delete", "5")


def test_a_change_is_one_scontrol_update_with_each_value_one_argument():
    from gateway.models import JobChange
    hostile = "x TimeLimit=999 Partition=other; rm -rf / $(id) `id` \\"
    argv = commands.update_job("12_3", JobChange(name=hostile, queue="batch", time_limit_minutes=45))
    assert argv == ["scontrol", "update", "JobId=12_3", f"JobName={hostile}", "Partition=batch", "TimeLimit=45"]
    assert commands.update_job("7", JobChange(time_limit_minutes=1)) == ["scontrol", "update", "JobId=7", "TimeLimit=1"]
    with pytest.raises(InvalidInput):
        commands.update_job("7", JobChange(queue="batch extra=1"))
    with pytest.raises(InvalidInput):
        commands.update_job("7", JobChange(name="a\0b"))
    with pytest.raises(ValueError):
        commands.update_job("7 JobId=8", JobChange(name="x"))
