"""The AIP plugin's parsers on verbatim output of a real OpenLava-lineage scheduler
(fixtures/openlava-2.2/, cut from a captured session; INDEX.tsv lists command and exit
status of each) and on the SkyForm AIP lines quoted in the scheduler notes."""
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from gateway.errors import (Conflict, Forbidden, InvalidInput, NotFound, SchedulerRefused,
                            SchedulerUnavailable)
from gateway.models import JobState
from gateway_aip import parse

from .samples import CAPTURED, fixture_bytes, fixture_text, ol

UTC = timezone.utc
SUBMITTED = datetime(2026, 11, 22, 0, 51, tzinfo=UTC)


# --------------------------------------------------------------------------- states and times

@pytest.mark.parametrize("native,state", [
    ("PEND", JobState.PENDING), ("WAIT", JobState.PENDING), ("PSUSP", JobState.HELD),
    ("RUN", JobState.RUNNING), ("USUSP", JobState.SUSPENDED), ("SSUSP", JobState.SUSPENDED),
    ("DONE", JobState.COMPLETED), ("EXIT", JobState.FAILED), ("UNKWN", JobState.UNKNOWN),
    ("ZOMBI", JobState.UNKNOWN), ("NEWSTATE", JobState.UNKNOWN),
])
def test_state_map(native, state):
    assert parse.map_state(native) is state


def test_killed_exit_is_cancelled_but_done_stays_completed():
    assert parse.map_state("EXIT", killed=True) is JobState.CANCELLED
    assert parse.map_state("DONE", killed=True) is JobState.COMPLETED


@pytest.mark.parametrize("text,expected", [
    ("Nov 22 00:51", datetime(2026, 11, 22, 0, 51, tzinfo=UTC)),
    ("11/22-00:51:25", datetime(2026, 11, 22, 0, 51, 25, tzinfo=UTC)),
    ("Sun Nov 22 00:51:25", datetime(2026, 11, 22, 0, 51, 25, tzinfo=UTC)),
    ("Sun Mar 15 18:22:41 2026", datetime(2026, 3, 15, 18, 22, 41, tzinfo=UTC)),
    ("Nov  2 09:05", datetime(2026, 11, 2, 9, 5, tzinfo=UTC)),
    ("2025/12/31-23:59:59", datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ("-", None), ("", None),
])
def test_times(text, expected):
    assert parse.parse_time(text, CAPTURED) == expected


def test_yearless_time_is_the_most_recent_past_date():
    jan = datetime(2027, 1, 1, 0, 0, 10, tzinfo=UTC)
    # a job submitted on Dec 31 and listed just after midnight belongs to last year
    assert parse.parse_time("Dec 31 23:59", jan) == datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert parse.parse_time("12/31-23:59:30", jan).year == 2026
    # a scheduler clock slightly ahead is not pushed back a year
    assert parse.parse_time("Jan  1 00:02", jan) == datetime(2027, 1, 1, 0, 2, tzinfo=UTC)
    # Feb 29 resolves to the last leap year
    assert parse.parse_time("Feb 29 12:00", datetime(2027, 3, 1, tzinfo=UTC)).year == 2024


def test_times_in_the_scheduler_time_zone_come_back_in_utc():
    tz = ZoneInfo("Asia/Shanghai")
    assert parse.parse_time("Nov 22 08:51", CAPTURED, tz) == SUBMITTED


@pytest.mark.parametrize("bad", ["yesterday", "Foo 22 00:51", "13/45-99:99:99", "Nov 22"])
def test_unparseable_times_raise(bad):
    with pytest.raises(ValueError):
        parse.parse_time(bad, CAPTURED)


# --------------------------------------------------------------------------- bjobs listings

def test_bjobs_json_running_and_pending(now):
    listing = parse.parse_bjobs_json(
        ol("bjobs_o_jobid_user_stat_queue_from_host_exec_host_job_name_s.txt"))
    jobs = [parse.record_to_job(r, now) for r in listing.records]
    assert [j.job_id for j in jobs] == ["2", "1", "5"]
    vnc, sleeper, pend = jobs
    assert (vnc.name, vnc.user_name, vnc.queue, vnc.state, vnc.native_state) == \
        ("vncjob", "alice", "vnc", JobState.RUNNING, "RUN")
    assert vnc.hosts == ["vm"] and vnc.submit_time == SUBMITTED
    assert vnc.start_time == datetime(2026, 11, 22, 0, 51, 25, tzinfo=UTC)
    assert pend.state is JobState.PENDING and pend.hosts == [] and pend.start_time is None
    assert sleeper.exit_code is None


def test_bjobs_json_finished_job_with_finish_time(now):
    listing = parse.parse_bjobs_json(
        ol("bjobs_a_o_jobid_user_stat_queue_job_name_exec_host_submit_ti.txt"))
    (job,) = [parse.record_to_job(r, now) for r in listing.records]
    assert (job.job_id, job.user_name, job.state, job.native_state) == ("7", "bob", JobState.FAILED, "EXIT")
    assert job.end_time == datetime(2026, 11, 22, 0, 51, 58, tzinfo=UTC)


def test_bjobs_json_missing_job_is_an_error_record_not_a_job():
    listing = parse.parse_bjobs_json(ol("bjobs_o_jobid_stat_json_99999.txt"))   # rc 255
    assert listing.records == [] and listing.not_found == ["99999"]


def test_bjobs_json_empty_list_exits_255_but_is_not_an_error():
    listing = parse.parse_bjobs_json(ol("bjobs_o_jobid_stat_json.txt"))
    assert listing.records == [] and listing.not_found == []


def test_bjobs_json_bad_field_is_a_502_naming_it():
    with pytest.raises(SchedulerRefused) as exc:
        parse.parse_bjobs_json(ol("bjobs_o_badfield_json.txt"))   # rc 99
    assert "<BADFIELD> in the format string is not a valid field name" in exc.value.msg


def test_bjobs_json_garbage_is_refused_with_the_raw_text():
    with pytest.raises(SchedulerRefused) as exc:
        parse.parse_bjobs_json('{"COMMAND": "bjobs", "RECORDS": [')
    assert "RECORDS" in exc.value.msg


def test_bjobs_json_values_are_strings_and_unknown_fields_are_kept(now):
    text = ('{"COMMAND":"bjobs","JOBS":1,"RECORDS":[{"JOBID":"12","USER":"u","STAT":"EXIT",'
            '"QUEUE":"q","JOB_NAME":"n","SUBMIT_TIME":"Nov 22 00:51","EXIT_CODE":"3",'
            '"SLOTS":"4","EXEC_HOST":"4*vm"}]}')
    (rec,) = parse.parse_bjobs_json(text).records
    job = parse.record_to_job(rec, now)
    assert job.exit_code == 3 and job.hosts == ["vm"] and rec["SLOTS"] == "4"


def test_bjobs_wide(now):
    listing = parse.parse_bjobs_wide(ol("bjobs_w.txt"))
    jobs = [parse.record_to_job(r, now) for r in listing.records]
    assert [(j.job_id, j.state, j.hosts) for j in jobs] == [
        ("2", JobState.RUNNING, ["vm"]), ("1", JobState.RUNNING, ["vm"]), ("5", JobState.PENDING, [])]
    assert all(j.submit_time == SUBMITTED for j in jobs)


def test_bjobs_wide_long_names_overflow_their_columns(now):
    listing = parse.parse_bjobs_wide(ol("bjobs_u_all_w__2.txt"))
    names = {r["JOBID"]: (r["USER"], r["JOB_NAME"], r["STAT"], r["QUEUE"]) for r in listing.records}
    assert names["8"] == ("lsfadmin", "a_very_long_job_name_for_wide_testing", "RUN", "vnc")
    assert names["2"] == ("alice", "vncjob", "RUN", "vnc")


def test_bjobs_wide_all_states_and_array_elements(now):
    listing = parse.parse_bjobs_wide(ol("bjobs_u_all_a_w.txt"))
    jobs = {j.job_id: j for j in (parse.record_to_job(r, now) for r in listing.records)}
    assert set(jobs) == {"2", "1", "3", "5", "6[1]", "6[2]", "6[3]", "7"}
    assert jobs["3"].state is JobState.COMPLETED and jobs["3"].exit_code == 0
    assert jobs["5"].state is JobState.FAILED and jobs["5"].hosts == []
    assert jobs["6[2]"].name == "arr[2]" and jobs["6[2]"].state is JobState.COMPLETED
    assert jobs["7"].user_name == "bob"


def test_bjobs_narrow_listing_blank_exec_host_by_header_position(now):
    listing = parse.parse_bjobs_wide(ol("bjobs.txt"), wide=False)
    assert [(r["JOBID"], r["EXEC_HOST"], r["JOB_NAME"]) for r in listing.records] == [
        ("2", "vm", "vncjob"), ("1", "vm", "sleeper1"), ("5", "", "pendme")]


@pytest.mark.parametrize("name", ["bjobs_a.txt", "bjobs_u_all.txt", "bjobs_J_vncjob.txt",
                                  "bjobs_1.txt", "bjobs_a_1.txt", "bjobs_a__2.txt",
                                  "bjobs_a__3.txt", "bjobs_u_alice.txt", "bjobs_a_11.txt",
                                  "bjobs__3.txt", "bjobs_u_all__2.txt", "bjobs_1__2.txt"])
def test_every_narrow_listing_sample_parses(name, now):
    listing = parse.parse_bjobs_wide(ol(name), wide=False)
    assert listing.records
    for rec in listing.records:
        job = parse.record_to_job(rec, now)
        assert job.state is not JobState.UNKNOWN and job.submit_time is not None


@pytest.mark.parametrize("name", ["bjobs_w.txt", "bjobs_w_5.txt", "bjobs_a_w.txt", "bjobs_w__2.txt",
                                  "bjobs_u_all_w.txt", "bjobs_u_all_a_w.txt", "bjobs_u_all_w__2.txt"])
def test_every_wide_listing_sample_parses(name, now):
    listing = parse.parse_bjobs_wide(ol(name))
    assert listing.records
    for rec in listing.records:
        job = parse.record_to_job(rec, now)
        assert job.state is not JobState.UNKNOWN and job.submit_time == job.submit_time.replace(year=2026)
        assert " " not in (job.user_name or "") and job.queue in ("normal", "short", "vnc")


def test_bjobs_wide_tolerates_unknown_extra_columns(now):
    text = ("JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME  GPU  PROJ\n"
            "12      alice   RUN   normal     vm          vm          my job     Nov 22 00:51 2    p1\n")
    (rec,) = parse.parse_bjobs_wide(text).records
    assert rec["JOB_NAME"] == "my job" and rec["GPU"] == "2" and rec["PROJ"] == "p1"
    assert parse.record_to_job(rec, now).submit_time == SUBMITTED


def test_bjobs_wide_multi_host_continuation_lines():
    text = ("JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME\n"
            "12      alice   RUN   normal     vm          2*hostA     mpi        Nov 22 00:51\n"
            "                                             2*hostB\n")
    (rec,) = parse.parse_bjobs_wide(text).records
    assert parse._hosts_of(rec["EXEC_HOST"]) == ["hostA", "hostB"]


def test_bjobs_empty_and_not_found():
    assert parse.parse_bjobs_wide(ol("bjobs__2.txt")).records == []          # rc 254
    listing = parse.parse_bjobs_wide(ol("bjobs_99999.txt"))                   # rc 255
    assert listing.records == [] and listing.not_found == ["99999"]


def test_bjobs_format_without_the_wide_header_is_refused():
    # `bjobs -o "jobid stat queue job_name"` (no -json): not a layout the plugin reads
    with pytest.raises(SchedulerRefused) as exc:
        parse.parse_bjobs_wide(ol("bjobs_o_jobid_stat_queue_job_name.txt"))
    assert "JOBID STAT QUEUE JOB_NAME" in exc.value.msg


def test_bjobs_line_that_cannot_be_understood_is_refused_verbatim():
    text = ("JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME\n"
            "12      alice   RUN   normal     vm\n")
    with pytest.raises(SchedulerRefused) as exc:
        parse.parse_bjobs_wide(text)
    assert "12      alice   RUN   normal     vm" in exc.value.msg


def test_bjobs_unparseable_time_is_refused(now):
    rec = {"JOBID": "1", "STAT": "RUN", "SUBMIT_TIME": "sometime"}
    with pytest.raises(SchedulerRefused):
        parse.record_to_job(rec, now)


def test_no_queue_filter_error():
    # `bjobs -q nosuch` -> "nosuch: No such queue": not a listing
    with pytest.raises(SchedulerRefused):
        parse.parse_bjobs_wide(ol("bjobs_q_nosuch.txt"))


# --------------------------------------------------------------------------- bjobs -l / bhist -l

def test_bjobs_long_running(now):
    (d,), missing = parse.parse_bjobs_long(ol("bjobs_l_2.txt"), now)
    assert missing == []
    assert (d.job_id, d.name, d.user, d.status, d.queue) == ("2", "vncjob", "alice", "RUN", "vnc")
    assert d.command == "echo hello from $LSB_JOBID on $(hostname); sleep 600"
    assert d.cwd == "$HOME" and d.exec_home == "/home/alice" and d.exec_cwd == "/home/alice"
    assert d.output_file == "/home/alice/vnc_%J.out" and d.error_file == "/home/alice/vnc_%J.err"
    assert d.hosts == ["vm"] and d.start_time == datetime(2026, 11, 22, 0, 51, 25, tzinfo=UTC)
    assert d.exit_code is None and not d.killed


@pytest.mark.parametrize("name", ["x>, Project <bob", "x>, User <bob>, Project <bob",
                                  "x>, Status <DONE>, Queue <short", "aProject <bob", "xUser <bob"])
def test_a_job_name_cannot_pose_as_the_owner_or_state(now, name):
    """The name is free text before User/Project/Status: a field it names a second time cannot
    be told from the real one, so the job gets none (under run_as: service no owner, so only
    administrators see it; before, "x>, Project <bob" made it bob's)."""
    text = ol("bjobs_l_2.txt").replace("Job Name <vncjob>", f"Job Name <{name}>")
    (d,), _ = parse.parse_bjobs_long(text, now)
    faked = {key: None for key in ("user", "project", "status", "queue") if f", {key.capitalize()} <" in name}
    assert "bob" not in (d.user, d.project) and d.status != "DONE" and d.queue != "short"
    assert {key: getattr(d, key) for key in faked} == faked
    untouched = {"user": "alice", "project": "default", "status": "RUN", "queue": "vnc"}
    assert {k: getattr(d, k) for k in untouched if k not in faked} == {k: v for k, v in untouched.items()
                                                                        if k not in faked}


def test_bjobs_long_pending_with_reason(now):
    (d,), _ = parse.parse_bjobs_long(ol("bjobs_l_5.txt"), now)
    assert d.status == "PEND" and d.processors == 8
    assert d.pending_reasons == ["Not enough job slot(s): 1 host"]
    assert d.start_time is None and d.hosts == []


def test_bjobs_long_done(now):
    (d,), _ = parse.parse_bjobs_long(ol("bjobs_l_3.txt"), now)
    assert d.status == "DONE" and d.exit_code == 0
    assert d.end_time == datetime(2026, 11, 22, 0, 51, 26, tzinfo=UTC)
    assert d.command == "echo quick done; id -un"


def test_bjobs_long_not_found(now):
    details, missing = parse.parse_bjobs_long(ol("bjobs_l_99999.txt"), now)
    assert details == [] and missing == ["99999"]
    assert parse.parse_bjobs_long(ol("bkill_abc.txt"), now) == ([], ["abc"])   # Illegal job ID


# LSF 10 wraps ``bjobs -l`` at 80 columns with the text column as indent; a killed job.
LSF10_WRAPPED = """\
Job <132286>, User <wwolski>, Project <default>, Status <EXIT>, Queue <pub.1h>,
                     Job Priority <50>, Command <./x.sh a > out.txt>, Share group charged <
                     /lsf_biol_all/wwolski>
Tue Jul 24 10:26:42: Submitted from host <brutus3>, CWD <$HOME/.>, Output File
                     <lsf.o%J>, Requested Resources <select[mem<70000] order[-u
                     t]>;
Tue Jul 24 10:26:47: Started on <a3010>, Execution Home </cluster/home/biol/wwo
                     lski>, Execution CWD </cluster/home/biol/wwolski/.>;
Tue Jul 24 10:26:53: Exited with exit code 130. The CPU time used is 0.0 seconds
                     .
Tue Jul 24 10:26:53: Completed <exit>; TERM_OWNER: job killed by owner.

 RUNLIMIT
 480.0 min of a6122

 MEMLIMIT
      2 G
------------------------------------------------------------------------------

Job <132287>, Job Name <two>, User <u>, Project <default>, Status <DONE>, Queue <q>, Command <true>
Tue Jul 24 10:26:42: Submitted from host <h>, CWD <$HOME>;
Tue Jul 24 10:26:47: Started 4 Task(s) on Host(s) <2*hA> <2*hB>, Allocated 4 Slot(s) on Host(s) <2*hA> <2*hB>, Execution Home </home/u>, Execution CWD </home/u>;
Tue Jul 24 10:26:53: Done successfully. The CPU time used is 0.0 seconds.
"""


def test_bjobs_long_lsf10_wrapping_kill_limits_and_several_jobs(now):
    (a, b), _ = parse.parse_bjobs_long(LSF10_WRAPPED, now)
    assert a.job_id == "132286" and a.status == "EXIT" and a.exit_code == 130
    assert a.killed and a.term_reason == "TERM_OWNER: job killed by owner"
    assert a.command == "./x.sh a > out.txt"
    assert a.exec_home == "/cluster/home/biol/wwolski" and a.output_file == "lsf.o%J"
    assert a.run_limit_minutes == 480 and a.mem_limit_mb == 2048
    assert a.submit_time.year == 2026 and a.submit_time.month == 7
    assert b.hosts == ["hA", "hB"] and b.exit_code == 0 and b.name == "two"


def test_bjobs_long_signal_exit_code():
    text = ("Job <9>, User <u>, Project <default>, Status <EXIT>, Queue <q>, Command <sleep 100>\n"
            "Sun Nov 22 00:51:25: Submitted from host <vm>, CWD <$HOME>;\n"
            "Sun Nov 22 00:51:25: Started on <vm>, Execution Home </home/u>, Execution CWD </home/u>;\n"
            "Sun Nov 22 00:51:30: Exited by signal 9. The CPU time used is 0.0 seconds.\n")
    (d,), _ = parse.parse_bjobs_long(text, CAPTURED)
    assert d.signal == 9 and d.exit_code == 137


def test_bhist_long_running_job(now):
    hist = parse.parse_bhist_long(ol("bhist_l_2.txt"), now)
    d = hist["2"]
    assert d.exec_home == "/home/alice" and d.exec_cwd == "/home/alice" and not d.killed
    assert d.queue == "vnc" and d.output_file == "/home/alice/vnc_%J.out"


def test_bhist_long_kill_request_marks_a_cancellation(now):
    text = ("Job <102>, Job Name <z>, User <u>, Project <default>, Command <z.sh>\n"
            "Fri Sep 19 11:10:05: Submitted from host <h>, to Queue <regress>, CWD <$HOME>;\n"
            "Fri Sep 19 11:11:00: Signal <KILL> requested by user or administrator <u>;\n"
            "Fri Sep 19 11:11:00: Exited by signal 9. The CPU time used is 0.0 seconds;\n"
            "\nSummary of time in seconds spent in various states by  Fri Sep 19 11:11:00\n"
            "  PEND     PSUSP    RUN      USUSP    SSUSP    UNKWN    TOTAL\n"
            "  55       0        0        0        0        0        55\n")
    assert parse.parse_bhist_long(text, now)["102"].killed


def test_bhist_no_job():
    assert parse.parse_bhist_long(ol("bhist_99999.txt"), CAPTURED) == {}


# --------------------------------------------------------------------------- submission

@pytest.mark.parametrize("name,job_id,queue", [
    ("bsub_J_sleeper1_q_normal_o_lava_J_out_sleep_300.txt", "1", "normal"),
    ("bsub_J_vncjob_q_vnc_o_vnc_J_out_e_vnc_J_err_echo_hello_from_.txt", "2", "vnc"),
    ("bsub_J_quick_q_short_o_quick_J_out_echo_quick_done_id_un.txt", "3", "short"),
    ("bsub_J_pendme_n_8_q_normal_sleep_10.txt", "5", "normal"),
    ("bsub_J_arr_1_3_q_normal_o_arr_J_I_out_echo_idx_LSB_JOBINDEX.txt", "6", "normal"),
    ("bsub_J_bobfail_q_normal_o_bobfail_J_out_exit_3.txt", "7", "normal"),
    ("bsub_J_a_very_long_job_name_for_wide_testing_q_vnc_o_dev_nul.txt", "8", "vnc"),
    ("bsub_J_after_restart_q_normal_o_home_alice_after_J_out_hostn.txt", "11", "normal"),
])
def test_bsub_accepted(name, job_id, queue):
    assert parse.parse_submit(ol(name)) == (job_id, queue)


def test_lsf_default_queue_message():
    assert parse.parse_submit("Job <123> is submitted to default queue <normal>.\n") == ("123", "normal")


def test_aip_csub_default_queue_message():
    assert parse.parse_submit(fixture_text("skyform-aip/csub_default_queue.txt")) == ("427", "medium")
    assert parse.parse_submit("Job 428 has been submitted to queue [short].\n") == ("428", "short")


def test_aip_csub_authentication_failure_with_exit_0_is_a_refusal():
    with pytest.raises(SchedulerRefused) as exc:
        parse.parse_submit(fixture_text("skyform-aip/csub_auth_failed_rc0.txt"))
    assert exc.value.msg == "Failed in an AIP library call: Authentication failed. Job not submitted."


def test_bsub_unknown_queue_is_the_clients_fault_verbatim():
    with pytest.raises(InvalidInput) as exc:
        parse.parse_submit(ol("bsub_q_nosuchqueue_sleep_1.txt"))
    assert exc.value.msg == "nosuchqueue: No such queue. Job not submitted."


@pytest.mark.parametrize("name,first", [
    ("bsub_Q_bogus_sleep_1.txt", "bsub: illegal option -- Q"),
    ("bsub_J_x_q_normal.txt", "No command is specified. Job not submitted."),
])
def test_bsub_input_errors(name, first):
    with pytest.raises(InvalidInput) as exc:
        parse.parse_submit(ol(name))
    assert exc.value.msg.splitlines()[0] == first


@pytest.mark.parametrize("text,cls", [
    ("Job array index too large. Job not submitted.\n", InvalidInput),     # LSBE_BIG_IDX
    ("User permission denied. Job not submitted.\n", Forbidden),           # LSBE_PERMISSION
    ("short: User cannot use the queue. Job not submitted.\n", Forbidden),  # LSBE_QUEUE_USE
    ("RUNLIMIT: Cannot exceed queue's hard limit(s). Job not submitted.\n", InvalidInput),  # LSBE_OVER_LIMIT
])
def test_bsub_refusals_that_are_not_the_schedulers_fault(text, cls):
    with pytest.raises(cls) as exc:
        parse.parse_submit(text)
    assert exc.value.msg == text.strip()


def test_bsub_daemons_down_is_503():
    with pytest.raises(SchedulerUnavailable) as exc:
        parse.parse_submit(ol("LSB_NTRIES_1_timeout_20_bsub_sleep_1.txt"))
    assert "LIM is down" in exc.value.msg


def test_bsub_unrecognized_text_is_502():
    with pytest.raises(SchedulerRefused):
        parse.parse_submit("Something odd happened.\n")
    with pytest.raises(SchedulerRefused):
        parse.parse_submit("")


# --------------------------------------------------------------------------- job actions

@pytest.mark.parametrize("name,job_id", [
    ("bstop_1.txt", "1"), ("bresume_1.txt", "1"), ("brequeue_1.txt", "1"),
    ("bkill_5.txt", "5"), ("bkill_s_TERM_1.txt", "1"),
])
def test_actions_accepted(name, job_id):
    assert parse.parse_action(ol(name), job_id).startswith(f"Job <{job_id}> is being ")


@pytest.mark.parametrize("name", ["bkill_99999.txt", "bstop_99999.txt", "bresume_99999.txt",
                                  "brequeue_99999.txt", "bkill_abc.txt"])
def test_actions_on_unknown_jobs_are_404(name):
    with pytest.raises(NotFound):
        parse.parse_action(ol(name), "99999")


def test_kill_of_a_finished_job_is_409_verbatim():
    with pytest.raises(Conflict) as exc:
        parse.parse_action(ol("bkill_5__2.txt"), "5")
    assert exc.value.msg == "Job <5>: Job has already finished"


@pytest.mark.parametrize("name", ["bkill_2.txt", "bstop_2.txt"])
def test_someone_elses_job_is_403_verbatim(name):
    with pytest.raises(Forbidden) as exc:
        parse.parse_action(ol(name), "2")
    assert exc.value.msg == "Job <2>: User permission denied"


def test_action_with_daemons_down_is_503():
    with pytest.raises(SchedulerUnavailable):
        parse.parse_action(ol("LSB_NTRIES_1_timeout_20_bkill_1.txt"), "1")


def test_action_state_conflicts():
    with pytest.raises(Conflict):
        parse.parse_action("Job <4>: Job is not suspended\n", "4")
    with pytest.raises(SchedulerRefused):
        parse.parse_action("Job <4>: Something new\n", "4")
    with pytest.raises(SchedulerRefused):
        parse.parse_action(ol("bkill.txt"), "4")     # usage text: not understood


# --------------------------------------------------------------------------- daemons down

@pytest.mark.parametrize("name", ["LSB_NTRIES_1_timeout_20_bjobs.txt", "LSB_NTRIES_1_timeout_20_bhosts.txt",
                                  "LSB_NTRIES_1_timeout_20_bqueues.txt", "LSB_NTRIES_1_timeout_20_lsid.txt"])
def test_lim_down_is_503_for_every_command(name):
    text = ol(name)
    with pytest.raises(SchedulerUnavailable):
        {"bjobs": parse.parse_bjobs_wide, "bhosts": parse.parse_bhosts,
         "bqueues": parse.parse_bqueues, "lsid": parse.parse_lsid}[name.rsplit("_", 1)[1][:-4]](text)


def test_the_retry_banner_is_503_too():
    assert isinstance(parse.scheduler_failure("LSF daemon (LIM) not responding ... still trying\n"),
                      SchedulerUnavailable)
    assert isinstance(parse.scheduler_failure("Failed in an AIP library call: Authentication failed."),
                      SchedulerRefused)


# --------------------------------------------------------------------------- output

def test_bpeek_with_separate_stderr_file_prints_stdout_before_the_titles():
    out, err = parse.parse_bpeek(fixture_bytes("openlava-2.2/bpeek_2.txt"))
    assert out == b"hello from 2 on vm\n" and err == b""


def test_bpeek_titles_first():
    assert parse.parse_bpeek(b"<< output from stdout >>\nline1\nline2\n") == (b"line1\nline2\n", b"")
    assert parse.parse_bpeek(b"<< output from stdout >>\na\n\n<< output from stderr >>\nb\n") == (b"a\n", b"b\n")
    assert parse.parse_bpeek(b"\n<< output from stderr >>\nerr only\n") == (b"", b"err only\n")
    assert parse.parse_bpeek(b"Job <5> : Not yet started.\n") is None


def test_job_report_is_stripped_from_the_output_file():
    data = fixture_bytes("openlava-2.2/quick_3.out")
    assert data.startswith(b"Sender: LSF System <lsfadmin@vm>")
    assert parse.strip_job_report(data) == b"quick done\nalice\n"


def test_report_with_a_separate_error_file_ends_with_a_pointer_to_it():
    head = fixture_bytes("openlava-2.2/quick_3.out").split(b"quick done\nalice\n")[0]
    data = head + b"out line\n\n\nPS:\n\nRead file </home/a/x.err> for stderr output of this job.\n\n"
    assert parse.strip_job_report(data) == b"out line\n"


def test_report_appended_after_direct_output_is_stripped():
    data = (b"line 1\nline 2\n"
            b"\n------------------------------------------------------------\n\n"
            b"Sender: LSF System <lsfadmin@vm>\nSubject: Job 4: <x> Done\n\nmore report\n")
    assert parse.strip_job_report(data) == b"line 1\nline 2\n"


def test_appended_reports_the_last_one_counts():
    data = fixture_bytes("openlava-2.2/quick_3.out")
    second = data.replace(b"quick done\nalice\n", b"second run\n")
    assert parse.strip_job_report(data + second) == b"second run\n"


def test_plain_file_is_unchanged():
    assert parse.strip_job_report(b"just output\n") == b"just output\n"


def test_output_paths():
    assert parse.resolve_output_path("/home/alice/vnc_%J.out", "2", "$HOME", "/home/alice") == \
        "/home/alice/vnc_2.out"
    assert parse.resolve_output_path("arr_%J_%I.out", "6[2]", "$HOME/runs", "/home/alice") == \
        "/home/alice/runs/arr_6_2.out"
    assert parse.resolve_output_path("~/x_%J.out", "3", "/tmp", "/home/a") == "/home/a/x_3.out"
    assert parse.resolve_output_path("x.out", "3", None, None) is None


# --------------------------------------------------------------------------- hosts, queues, users

@pytest.mark.parametrize("name", ["bhosts.txt", "bhosts_w.txt", "bhosts__2.txt"])
def test_bhosts(name):
    (h,) = parse.parse_bhosts(ol(name))
    assert (h.name, h.state, h.native_state, h.max_slots) == ("vm", "ok", "ok", 4)


def test_bhosts_running_counts():
    (h,) = parse.parse_bhosts(ol("bhosts__2.txt"))
    assert (h.njobs, h.running, h.suspended) == (1, 1, 0)


def test_bhosts_states_and_an_aip_gpu_column():
    text = ("HOST_NAME          STATUS          JL/U    MAX  NJOBS    RUN  SSUSP  USUSP    RSV  gpu\n"
            "a                  closed_Adm         -      4      0      0      0      0      0  2\n"
            "b                  closed_Full        -      4      4      3      1      0      0\n"
            "c                  unavail            -      -      -      -      -      -      -  -\n")
    a, b, c = parse.parse_bhosts(text)
    assert (a.state, a.reason) == ("closed", "closed_Adm")
    assert (b.state, b.suspended) == ("ok", 1)
    assert (c.state, c.max_slots) == ("down", None)


def test_bhosts_unknown_host_is_refused():
    with pytest.raises(SchedulerRefused):
        parse.parse_bhosts(ol("bhosts_nosuchhost.txt"))


@pytest.mark.parametrize("name", ["bqueues.txt", "bqueues_w.txt", "bqueues__2.txt"])
def test_bqueues(name):
    qs = parse.parse_bqueues(ol(name), default_queues=["normal"])
    assert [(q.name, q.priority, q.open, q.active, q.is_default) for q in qs] == [
        ("short", 50, True, True, False), ("vnc", 40, True, True, False),
        ("normal", 30, True, True, True)]


def test_bqueues_counts_and_closed_inactive():
    qs = {q.name: q for q in parse.parse_bqueues(ol("bqueues__2.txt"))}
    assert (qs["normal"].njobs, qs["normal"].pending, qs["normal"].running) == (1, 1, 0)
    text = ("QUEUE_NAME      PRIO STATUS          MAX JL/U JL/P JL/H NJOBS  PEND   RUN  SUSP \n"
            "night            50   Closed:Inact     8    -    -    -     0     0     0     0\n"
            "day              40   Open:Inact_Adm   -    -    -    -     0     0     0     0\n")
    night, day = parse.parse_bqueues(text)
    assert (night.open, night.active, night.max_slots) == (False, False, 8)
    assert (day.open, day.active, day.native_state) == (True, False, "Open:Inact_Adm")


def test_bqueues_bad_status_is_refused():
    text = ("QUEUE_NAME      PRIO STATUS          MAX JL/U JL/P JL/H NJOBS  PEND   RUN  SUSP \n"
            "weird            50   Sideways         -    -    -    -     0     0     0     0\n")
    with pytest.raises(SchedulerRefused):
        parse.parse_bqueues(text)


def test_busers():
    (alice,) = parse.parse_busers(ol("busers__2.txt"))
    assert (alice.name, alice.njobs, alice.pending, alice.running, alice.max_jobs) == ("alice", 2, 1, 1, 20)
    names = [u.name for u in parse.parse_busers(ol("busers_all.txt"))]
    assert names == ["alice", "bob", "vncusers"]          # "default" has limits, no counts
    assert len(parse.parse_busers(ol("busers.txt"))) == 1
    assert len(parse.parse_busers(ol("busers_nosuchuser.txt"))) == 1   # the scheduler's garbage name


def test_lsid_and_bparams():
    info = parse.parse_lsid(ol("lsid.txt"))
    assert info == {"version": "volclava project 2.2, Nov 22 2026", "cluster": "lava", "master": "vm"}
    assert parse.parse_bparams_default_queues(ol("bparams.txt")) == ["normal"]


def test_badmin_messages():
    assert parse.parse_badmin_host("Close <vm> ...... done\n", "vm") == "Close <vm> ...... done"
    assert parse.parse_badmin_host("Open <vm> ...... done : host remains closed due to job limit;  \n", "vm")
    with pytest.raises(NotFound):
        parse.parse_badmin_host(ol("bhosts_nosuchhost.txt"), "nosuchhost")
    with pytest.raises(Forbidden):
        parse.parse_badmin_host("Close <vm> ...... Host control failed: User permission denied\n", "vm")
    assert parse.parse_badmin_queue("Queue <normal> is closed\n", "normal") == "Queue <normal> is closed"
    with pytest.raises(NotFound):
        parse.parse_badmin_queue("nosuch: No such queue\n", "nosuch")
    with pytest.raises(SchedulerRefused):
        parse.parse_badmin_queue(ol("badmin_showstatus.txt"), "x")


def test_every_fixture_is_covered_by_a_test():
    """Each verbatim sample is used above (the index lists them all)."""
    import pathlib
    import re
    here = pathlib.Path(__file__)
    index = (here.parent / "fixtures" / "openlava-2.2" / "INDEX.tsv").read_text().splitlines()[1:]
    names = [ln.split("\t")[0] for ln in index]
    source = here.read_text()
    unused = [n for n in names if n not in source and n not in UNUSED_ON_PURPOSE]
    assert not unused, unused
    assert re.search(r"fixtures", source)


# Samples of commands the plugin does not run (kept for reference, not parsed).
UNUSED_ON_PURPOSE = {
    "lshosts.txt", "lsload.txt", "bhosts_l.txt", "bhist_a.txt", "badmin_ckconfig.txt",
    "ls_cat_quick_3_out_head_30_cat_vnc_2_out_vnc_2_err_2_1_head.txt",
}


def test_the_report_bounds_from_two_windows_cut_as_the_whole_file_would():
    """A large output file is read by its first and last windows: job_report_bounds finds
    the job's own output there exactly where strip_job_report finds it in the whole file."""
    import random
    rng = random.Random(8)
    report = fixture_bytes("openlava-2.2/quick_3.out")
    head = report.split(b"quick done\nalice\n")[0]
    ps = b"\n\nPS:\n\nRead file </home/a/x.err> for stderr output of this job.\n\n"
    appended = (b"\n------------------------------------------------------------\n\n"
                b"Sender: LSF System <lsfadmin@vm>\nSubject: Job 4: <x> Done\n\nmore report\n")
    window = 2048
    for case in range(300):
        body = bytes(rng.choice(b"ab\nxyz") for _ in range(rng.randrange(2 * window, 6 * window)))
        kind = case % 6
        if kind == 0:
            data = head + body + ps
        elif kind == 1:
            data = head + body
        elif kind == 2:
            data = body + appended
        elif kind == 3:
            data = body
        elif kind == 4:     # the file reused: an earlier job's report and output, then this one's
            earlier = head + b"old output\n" * rng.randrange(0, 50)
            data = earlier + head + body + ps
        else:               # ...an earlier job's large output: this one's report is in the last window
            data = head + body + ps + head + b"new output\n" * rng.randrange(0, 50) + ps
        start, end = parse.job_report_bounds(data[:window], data[-window:], len(data))
        assert data[start:end] == parse.strip_job_report(data), (case, kind, start, end)
    # The last report starting exactly where the last window does.
    last = head + b"n" * (window - len(head) - len(ps)) + ps
    data = head + b"old\n" * 2000 + last
    assert len(last) == window
    start, end = parse.job_report_bounds(data[:window], data[-window:], len(data))
    assert data[start:end] == parse.strip_job_report(data) == b"n" * (window - len(head) - len(ps))


def test_a_reused_files_last_report_between_the_windows_is_found_by_its_offset():
    """-o appends: a file reused by two jobs, the second's output longer than a window, has
    its last report in neither window. The plugin greps for it on the cluster (the report's
    offset and its 'follows' line) and passes where the output starts."""
    report = fixture_bytes("openlava-2.2/quick_3.out")
    head = report.split(b"quick done\nalice\n")[0]
    ps = b"\n\nPS:\n\nRead file </home/a/x.err> for stderr output of this job.\n\n"
    window = 2048
    second = b"".join(b"second %d\n" % i for i in range(2000))
    data = head + b"first\n" * 1000 + ps + head + second + ps
    without = parse.job_report_bounds(data[:window], data[-window:], len(data))
    assert data[without[0]:without[1]] != second                  # the windows alone cannot tell
    # What the cluster's grep -b finds: the last report line, and its follows line from there.
    report_at = data.rfind(b"\nSender: LSF System <") + 1
    follows_at = data.index(b"The output (if any) follows:\n", report_at) - report_at
    body_start = report_at + follows_at + parse.REPORT_FOLLOWS_LEN
    start, end = parse.job_report_bounds(data[:window], data[-window:], len(data), body_start)
    assert data[start:end] == second == parse.strip_job_report(data)


# --------------------------------------------------------------------------- bmod, run limits

def test_bmod_accepted():
    assert parse.parse_modify(ol("bmod_J_renamed_5.txt"), "5") == "Parameters of job <5> are being changed"


# bmod prints OpenLava's prtErrMsg/sub_perror form ("<what>: <why>. Job not modified.",
# lsbatch/cmd/bmod.c, cmd.sub.c): the queue named for the queue's errors, the limit's name
# for LSBE_OVER_LIMIT.
@pytest.mark.parametrize("text,cls,field", [
    ("99999: No matching job found. Job not modified.\n", NotFound, None),
    ("Job has already finished. Job not modified.\n", Conflict, None),
    ("Only the following parameters can be used to modify a running job: "
     "-c, -M, -W, -o, -e, -r. Job not modified.\n", Conflict, None),
    ("short: Queue has been closed. Job not modified.\n", Conflict, None),
    ("nosuch: No such queue. Job not modified.\n", InvalidInput, "queue"),
    ("Options -q and -O cannot be applied on job array. Job not modified.\n", InvalidInput, "queue"),
    ("Bad job name. Job not modified.\n", InvalidInput, "name"),
    ("Change job name is not allowed for job array. Job not modified.\n", InvalidInput, "name"),
    ("RUNLIMIT: Cannot exceed queue's hard limit(s). Job not modified.\n", InvalidInput, "timeLimitMinutes"),
    ("User permission denied. Job not modified.\n", Forbidden, None),
    # LSBE_QUEUE_USE: the queue's USERS leave the caller out (Slurm's "not permitted to use
    # this partition" is a 403 too), not a refusal of unknown meaning (502)
    ("short: User cannot use the queue. Job not modified.\n", Forbidden, None),
    ("Job <5>: User cannot use the queue\n", Forbidden, None),
    ("short: User is not allowed to use the queue. Job not modified.\n", Forbidden, None),
    ("Something new. Job not modified.\n", SchedulerRefused, None),
])
def test_bmod_refusals(text, cls, field):
    with pytest.raises(cls) as exc:
        parse.parse_modify(text, "5")
    assert text.strip() in exc.value.msg                    # the scheduler's words
    if field:
        assert list(exc.value.errors) == [field] and exc.value.errors[field][0] in text
    else:
        assert not exc.value.errors


def test_bmod_daemons_down_and_nothing_printed():
    with pytest.raises(SchedulerUnavailable):
        parse.parse_modify("Failed in an LSF library call: LIM is down; try later. Job not modified.\n", "5")
    with pytest.raises(SchedulerUnavailable):
        parse.parse_modify(ol("LSB_NTRIES_1_timeout_20_bkill_1.txt"), "1")
    with pytest.raises(SchedulerRefused):
        parse.parse_modify("", "5")
    with pytest.raises(SchedulerRefused):         # another command's success is no success
        parse.parse_modify(ol("bswitch_short_5.txt"), "5")


@pytest.mark.parametrize("text,minutes", [
    ("30.0 min of vm", 30), ("480.0 min of a6122", 480), ("30.0", 30), ("30.0/hostA", 30),
    ("29.6", 30), ("00:30:00", 30), ("01:30:00/hostA", 90), ("-", None), ("", None), (None, None),
    ("unlimited", None),
    # under a minute is a minute, not 0 (no time at all); rounding otherwise
    ("0.5", 1), ("0.1 min of vm", 1), ("00:00:30", 1), ("00:00:01/hostA", 1), ("1.4", 1), ("1.6", 2),
    ("0.0", 0), ("00:00:00", 0),
])
def test_run_limits(text, minutes):
    assert parse.run_limit_minutes(text) == minutes


def test_bqueues_long_run_limits():
    """bqueues -l: the sample's queue has no limit; OpenLava's prtResourceLimit columns (25
    characters each), a maximum after default limits, LSF 10's value without a host."""
    assert parse.parse_bqueues_run_limits(ol("bqueues_l_vnc.txt")) == {"vnc": None}
    stats = ol("bqueues_l_vnc.txt").split("\nSCHEDULING PARAMETERS")[0]
    only_max = stats.replace("QUEUE: vnc", "QUEUE: short") + (
        "\n\n CPULIMIT                RUNLIMIT                PROCLIMIT\n"
        " 600.0 min of vm          60.0 min of vm           4\n")
    with_default = stats.replace("QUEUE: vnc", "QUEUE: long") + (
        "\n\nDEFAULT LIMITS:\n RUNLIMIT                \n 30.0 min of vm           \n\n"
        "MAXIMUM LIMITS:\n RUNLIMIT                \n 1440.0 min               \n")
    assert parse.parse_bqueues_run_limits(only_max + "\n" + with_default + "\n" + ol("bqueues_l_vnc.txt")) == \
        {"short": 60, "long": 1440, "vnc": None}
    assert parse.parse_bqueues_run_limits(only_max + "\n" + with_default, which="default") == \
        {"short": None, "long": 30}
    assert parse.parse_bqueues_run_limits("nosuch: No such queue\n") == {}
    with pytest.raises(SchedulerUnavailable):
        parse.parse_bqueues_run_limits(ol("LSB_NTRIES_1_timeout_20_bqueues.txt"))


def test_bjobs_json_runtimelimit(now):
    """LSF 10.1's -o runtimelimit (add it to json_fields): the listing carries the limit."""
    listing = parse.parse_bjobs_json(
        '{"COMMAND":"bjobs","JOBS":2,"RECORDS":[{"JOBID":"5","STAT":"PEND","JOB_NAME":"a",'
        '"RUNTIMELIMIT":"30.0/vm"},{"JOBID":"6","STAT":"RUN","JOB_NAME":"b","RUNTIMELIMIT":"-"}]}')
    a, b = (parse.record_to_job(r, now) for r in listing.records)
    assert (a.time_limit_minutes, b.time_limit_minutes) == (30, None)
    (plain,) = parse.parse_bjobs_json(ol("bjobs_o_jobid_stat_json_99999.txt").replace(
        '"ERROR":\t"Job <99999> is not found"', '"STAT":\t"RUN"')).records
    assert parse.record_to_job(plain, now).time_limit_minutes is None


def test_bjobs_long_run_limit_as_the_stand_in_and_lsf_print_it(now):
    """" RUNLIMIT" with trailing blanks, its value, then straight on to the pending reasons."""
    text = ol("bjobs_l_5.txt").replace(
        " PENDING REASONS:", "\n RUNLIMIT                \n 30.0 min of vm\n PENDING REASONS:")
    (d,), _ = parse.parse_bjobs_long(text, now)
    assert d.run_limit_minutes == 30 and d.pending_reasons == ["Not enough job slot(s): 1 host"]
