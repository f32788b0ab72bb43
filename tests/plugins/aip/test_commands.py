"""The AIP plugin's argument lists: every JobSpec field, the allow-list, both command sets."""
import pytest

from gateway.errors import ConfigError, InvalidInput, NotImplementedByPlugin
from gateway.models import JobSpec
from gateway_aip import commands as C
from gateway_aip.options import load_options


def args_of(**spec):
    return C.submit_args(JobSpec(**spec)).args


# --------------------------------------------------------------------------- command sets

def test_b_and_c_names():
    b, c = C.CommandSet("b"), C.CommandSet("c")
    assert [b.get(n) for n in ("bsub", "bjobs", "bkill", "bstop", "bresume", "bhosts", "bqueues", "bhist", "bpeek")] == \
        ["bsub", "bjobs", "bkill", "bstop", "bresume", "bhosts", "bqueues", "bhist", "bpeek"]
    assert [c.get(n) for n in ("bsub", "bjobs", "bkill", "bstop", "bresume", "bhosts", "bqueues", "bhist", "bpeek")] == \
        ["csub", "cjobs", "ckill", "cstop", "cresume", "chosts", "cqueues", "chist", "cread"]
    assert c.get("brequeue") is None and c.get("badmin") is None and c.get("busers") is None


def test_overrides_and_bindir():
    c = C.CommandSet("c", {"badmin": "badmin", "bhist": None, "bjobs": "/opt/x/bin/cjobs"}, "/opt/aip/bin")
    assert c.get("badmin") == "/opt/aip/bin/badmin"
    assert c.get("bhist") is None
    assert c.get("bjobs") == "/opt/x/bin/cjobs"
    assert c.get("bsub") == "/opt/aip/bin/csub"


def test_missing_command_is_a_clear_501():
    with pytest.raises(NotImplementedByPlugin) as exc:
        C.CommandSet("c").need("brequeue", "requeue of a job")
    assert "requeue of a job" in exc.value.msg and "commands_override.brequeue" in exc.value.msg
    assert exc.value.status == 501


# --------------------------------------------------------------------------- job spec -> bsub

def test_minimal_command_job():
    sub = C.submit_args(JobSpec(command="echo hi; sleep 1"))
    assert sub.args == ["-o", "lsf-%J.out", "-e", "lsf-%J.err", "echo hi; sleep 1"]
    assert sub.stdin is None and sub.env == {} and sub.chdir is None


def test_script_goes_to_stdin():
    sub = C.submit_args(JobSpec(script="#!/bin/sh\necho hi"))
    assert sub.stdin == b"#!/bin/sh\necho hi\n"
    assert sub.args == ["-o", "lsf-%J.out", "-e", "lsf-%J.err"]


def test_script_location_text_is_sent_like_a_script():
    sub = C.submit_args(JobSpec(script_location="/x.sh"), script_text="echo from file\n")
    assert sub.stdin == b"echo from file\n"


def test_every_field_maps_to_its_option():
    sub = C.submit_args(JobSpec(
        command="run", name="sim", queue="short", cpus=8, nodes=2, memory_mb=2048,
        time_limit_minutes=90, work_dir="/data/run", environment={"A": "1", "B": "x y"},
        stdout="/data/o_%J", stderr="/data/e_%J", dependency="afterok:12:13", hold=True,
        native_options=["-P", "proj", "-x"]))
    assert sub.args == ["-J", "sim", "-q", "short", "-n", "8", "-R", "span[ptile=4]",
                        "-M", str(2048 * 1024), "-W", "90", "-o", "/data/o_%J", "-e", "/data/e_%J",
                        "-w", "done(12) && done(13)", "-H", "-P", "proj", "-x", "run"]
    assert sub.env == {"A": "1", "B": "x y"}
    assert sub.chdir == "/data/run"


def test_work_dir_with_cwd_flag():
    sub = C.submit_args(JobSpec(command="x", work_dir="/w"), cwd_flag=True)
    assert sub.args[:2] == ["-cwd", "/w"] and sub.chdir is None


@pytest.mark.parametrize("unit,value", [("KB", "1048576"), ("MB", "1024"), ("GB", "1")])
def test_memory_units(unit, value):
    assert C.submit_args(JobSpec(command="x", memory_mb=1024), memory_unit=unit).args[:2] == ["-M", value]


def test_one_node_spans_one_host():
    assert args_of(command="x", cpus=4, nodes=1)[:4] == ["-n", "4", "-R", "span[hosts=1]"]


def test_cpus_per_task_without_cpus():
    assert args_of(command="x", cpus_per_task=3, nodes=2)[:4] == ["-n", "6", "-R", "span[ptile=3]"]


def test_cpus_not_a_multiple_of_nodes():
    with pytest.raises(InvalidInput):
        args_of(command="x", cpus=5, nodes=2)


def test_stdout_without_stderr_merges_them():
    assert args_of(command="x", stdout="/o") == ["-o", "/o", "x"]


def test_arrays():
    assert args_of(command="x", name="arr", array="1-100%10")[:2] == ["-J", "arr[1-100]%10"]
    args = args_of(command="x", array="1,3,5-7")
    assert args[:2] == ["-J", "array[1,3,5-7]"]
    assert args[2:6] == ["-o", "lsf-%J_%I.out", "-e", "lsf-%J_%I.err"]
    for bad in ("1-", "a-b", "1-10%", "1-10;rm"):
        with pytest.raises(InvalidInput):
            args_of(command="x", array=bad)


@pytest.mark.parametrize("dep,expr", [
    ("afterok:12", "done(12)"),
    ("afterany:12:13", "ended(12) && ended(13)"),
    ("afternotok:4,after:5", "exit(4) && started(5)"),
    ("afterok:4?afterok:5", "done(4) || done(5)"),
    ("afterok:7_2", "done(7[2])"),
    ("done(12) || exit(13)", "done(12) || exit(13)"),
])
def test_dependencies(dep, expr):
    assert C.dependency_expr(dep) == expr


def test_bad_slurm_style_dependency():
    with pytest.raises(InvalidInput):
        C.dependency_expr("afterok:abc")


def test_names_with_brackets_are_refused():
    with pytest.raises(InvalidInput):
        args_of(command="x", name="a[1]")


def test_command_starting_with_a_dash_is_refused():
    with pytest.raises(InvalidInput):
        args_of(command="--version")


@pytest.mark.parametrize("field", ["name", "queue", "work_dir", "stdout", "command"])
def test_nul_characters_are_refused(field):
    spec = {"command": "x", field: "a\x00b"}
    with pytest.raises(InvalidInput):
        C.submit_args(JobSpec(**spec))


def test_shell_metacharacters_stay_single_arguments():
    evil = "x; touch /tmp/pwned $(id) `id` | cat > /etc/x && '\"\n"
    sub = C.submit_args(JobSpec(command=evil, name=evil.replace("\n", " ").replace(">", ""), queue="q;rm",
                                environment={"V": evil}))
    assert evil in sub.args and "q;rm" in sub.args and sub.env["V"] == evil
    argv = C.env_prefix(sub.env, "/tmp/$(id)") + ["bsub", *sub.args]
    assert argv[:3] == ["env", "-C", "/tmp/$(id)"] and argv[3] == f"V={evil}"


# --------------------------------------------------------------------------- nativeOptions

def test_native_options_allow_list():
    assert C.check_native_options(["-R", "select[mem>100]", "-x", "-G", "grp"], C.DEFAULT_NATIVE_ALLOW) == \
        ["-R", "select[mem>100]", "-x", "-G", "grp"]


@pytest.mark.parametrize("opts,word", [
    (["--definitely-not-allowed"], "--definitely-not-allowed"),
    (["-E", "rm -rf /"], "-E"),
    (["-K"], "-K"),
    (["-Is"], "-Is"),
    (["-q", "other"], "queue"),
    (["-o", "/x"], "stdout"),
    (["-R"], "-R needs"),
    (["select[x]"], "select[x]"),
])
def test_native_options_refused(opts, word):
    with pytest.raises(InvalidInput) as exc:
        C.check_native_options(opts, C.DEFAULT_NATIVE_ALLOW)
    assert word in exc.value.msg


# --------------------------------------------------------------------------- environment

def test_environment_names_and_reserved_variables():
    assert C.check_env({"OMP_NUM_THREADS": "4"}) == {"OMP_NUM_THREADS": "4"}
    for bad in ("1X", "A-B", "A B", ""):
        with pytest.raises(InvalidInput):
            C.check_env({bad: "v"})
    for reserved in ("PATH", "LD_PRELOAD", "LSF_ENVDIR", "LSB_NTRIES", "BASH_ENV", "HOME"):
        with pytest.raises(InvalidInput) as exc:
            C.check_env({reserved: "v"})
        assert reserved in exc.value.msg


def test_env_prefix():
    assert C.env_prefix({}) == []
    assert C.env_prefix({"A": "1"}, "/d") == ["env", "-C", "/d", "A=1"]
    with pytest.raises(ValueError):
        C.env_prefix({"-u": "x"})


# --------------------------------------------------------------------------- queries

def test_query_arguments():
    assert C.bjobs_json_args(["jobid", "stat"], None) == ["-a", "-u", "all", "-o", "jobid stat", "-json"]
    assert C.bjobs_wide_args("alice", ["5"]) == ["-a", "-w", "-u", "alice", "5"]
    assert C.bjobs_long_args(["5", "6[2]"]) == ["-l", "-a", "-u", "all", "5", "6[2]"]
    assert C.bhist_long_args(["5"]) == ["-l", "-u", "all", "5"]
    assert C.job_id_arg("6[2]") == "6[2]"
    for bad in ("abc", "-1", "5;rm", "1" * 16):
        with pytest.raises(InvalidInput):
            C.job_id_arg(bad)
    assert C.name_arg("normal", "queue") == "normal"
    with pytest.raises(InvalidInput):
        C.name_arg("-x", "host")


def test_action_and_admin_commands():
    assert C.ACTION_COMMANDS["hold"] == ("bstop", []) and C.ACTION_COMMANDS["release"] == ("bresume", [])
    assert C.QUEUE_ACTIONS == {"open": "qopen", "close": "qclose", "activate": "qact", "inactivate": "qinact"}
    assert C.HOST_ACTIONS == {"open": "hopen", "close": "hclose"}


@pytest.mark.parametrize("natives,args", [
    (["DONE"], ["-d"]), (["PDONE"], ["-d"]), (["EXIT"], ["-e"]), (["exit "], ["-e"]),
    (["PERR"], ["-d", "-e"]),                  # LSF's post-exec error: DONE or EXIT before it
    (["RUN"], []), (["USUSP"], []), (["SSUSP"], []), (["PROV"], []), (["UNKWN"], []), ([""], []),
    # an array's elements: any still active -> brequeue's default (its started elements)
    (["DONE", "DONE"], ["-d"]), (["EXIT", "EXIT"], ["-e"]), (["DONE", "EXIT", "DONE"], ["-d", "-e"]),
    (["DONE", "RUN"], []), (["EXIT", "SSUSP", "DONE"], []),
])
def test_requeue_filter_follows_the_state_just_read(natives, args):
    """brequeue with no option refuses a DONE/EXIT job (LSF, OpenLava): -d for DONE, -e for
    EXIT, nothing for a started job; never -a (it would act on whatever the job is by then)."""
    assert C.requeue_args(natives) == args
    assert C.ACTION_COMMANDS["requeue"] == ("brequeue", [])        # the filter is added per job


# --------------------------------------------------------------------------- options

def test_options_defaults_and_errors():
    o = load_options({})
    assert (o["commands"], o["run_as"], o["listing"], o["memory_unit"]) == ("b", "service", "wide", "KB")
    with pytest.raises(ConfigError) as exc:
        load_options({"commands": "x", "bindir": "relative", "timezone": "Mars/Base", "bogus": 1})
    for word in ("commands", "bindir", "timezone", "bogus"):
        assert word in exc.value.msg
    with pytest.raises(ConfigError):
        load_options({"commands_override": {"qsub": "x"}})


@pytest.mark.parametrize("name", ["x>, Project <bob", "a<b", "b>"])
def test_names_with_angle_brackets_are_refused(name):
    """bjobs -l prints "Key <value>" fields after the name: such a name could pose as one."""
    with pytest.raises(InvalidInput, match="< or >"):
        args_of(name=name, command="true")


# --------------------------------------------------------------------------- changing a job

def test_bmod_name_in_both_sets():
    """Neither set has its own name: the c-set runs the LSF-compatible one (an AIP head node
    has it), and both can override it or turn it off. bswitch is not run: a queue moves
    with bmod -q, in the same command as the rest of a change."""
    for style in ("b", "c"):
        assert C.CommandSet(style).get("bmod") == "bmod"
    off = C.CommandSet("c", {"bmod": None})
    assert off.get("bmod") is None
    assert C.CommandSet("c", {"bmod": "/opt/aip/bin/cmod"}).get("bmod") == "/opt/aip/bin/cmod"
    with pytest.raises(NotImplementedByPlugin) as exc:
        off.need("bmod", "changing a job")
    assert "commands_override.bmod" in exc.value.msg
    assert load_options({"commands_override": {"bmod": None}})["commands_override"] == {"bmod": None}
    with pytest.raises(ConfigError):
        load_options({"commands_override": {"bswitch": "bswitch"}})


def test_bmod_queue_name_and_limit_in_one_call():
    assert C.bmod_args("5", queue="short", name="renamed", time_limit_minutes=30) == \
        ["-q", "short", "-J", "renamed", "-W", "30", "5"]
    assert C.bmod_args("5", name="renamed") == ["-J", "renamed", "5"]
    assert C.bmod_args("5", queue="short") == ["-q", "short", "5"]
    assert C.bmod_args("6[2]", time_limit_minutes=90) == ["-W", "90", "6[2]"]     # plain minutes
    assert C.bmod_args("5") == []


def test_bmod_name_is_one_argument_whatever_it_holds():
    payload = "x; touch /tmp/p $(id) `id` | & -- '\" é"
    assert C.bmod_args("5", name=payload) == ["-J", payload, "5"]
    assert C.bmod_args("5", name="-W") == ["-J", "-W", "5"]      # bmod takes it as -J's value


@pytest.mark.parametrize("bad,why", [("a[1]", "[ and ]"), ("a]", "[ and ]"), ("", "[ and ]"),
                                     ("x>, Project <bob", "< or >"), ("a<b", "< or >"), ("a\x00b", "NUL")])
def test_bmod_names_are_checked_as_bsubs(bad, why):
    for build in (lambda: C.bmod_args("5", name=bad), lambda: args_of(command="x", name=bad)):
        with pytest.raises(InvalidInput) as exc:
            build()
        assert set(exc.value.errors) == {"name"} and why in str(exc.value.errors) + exc.value.msg


@pytest.mark.parametrize("bad", [0, -5, 1.5, "30", True])
def test_bmod_time_limit_is_whole_minutes(bad):
    with pytest.raises(InvalidInput) as exc:
        C.bmod_args("5", time_limit_minutes=bad)
    assert set(exc.value.errors) == {"timeLimitMinutes"}


@pytest.mark.parametrize("bad", ["5;rm", "abc", "", "5[x]", "-5"])
def test_bmod_job_ids_are_checked(bad):
    with pytest.raises(InvalidInput):
        C.bmod_args(bad, name="x")
    with pytest.raises(InvalidInput):
        C.bmod_args(bad, queue="short")


def test_bmod_queue_is_a_plain_name():
    for bad in ("-q", "short;rm", "a b", "", "x" * 200):
        with pytest.raises(InvalidInput) as exc:
            C.bmod_args("5", queue=bad, name="x")
        assert set(exc.value.errors) == {"queue"}
