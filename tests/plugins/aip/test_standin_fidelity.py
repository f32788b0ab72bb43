"""The stand-in (tests/standins/lsf) prints what the real scheduler printed: its messages are
compared byte for byte with the verbatim OpenLava 2.2 samples, its layouts line by line."""
from __future__ import annotations

import os
import re
import time

import pytest

from tests.helpers import require
from tests.standins.lsf import lsf_standin

from .samples import fixture_bytes, ol

ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def cluster():
    require(ROOT, "the stand-in runs jobs as several users only as root")
    with lsf_standin(admins=("gwadmin",), slots=4) as c:
        yield c


def run(cluster, *argv, user="gwalice", stdin=None):
    r = cluster.run(list(argv), user=user, stdin=stdin)
    return r.returncode, (r.stdout + r.stderr).decode()


def submit(cluster, *args, user="gwalice"):
    rc, out = run(cluster, "bsub", *args, user=user)
    m = re.fullmatch(r"Job <(\d+)> is submitted to (?:default )?queue <\w+>\.\n", out)
    assert rc == 0 and m, out
    return m.group(1)


def wait_status(cluster, jid, status, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, out = run(cluster, "bjobs", "-a", "-w", jid)
        if re.search(rf"^{jid}\s+\S+\s+{status}\b", out, re.M):
            return out
        time.sleep(0.1)
    raise AssertionError(out)


@pytest.mark.parametrize("argv,sample,rc", [
    (("bsub", "-q", "nosuchqueue", "sleep", "1"), "bsub_q_nosuchqueue_sleep_1.txt", 255),
    (("bkill", "99999"), "bkill_99999.txt", 255),
    (("bstop", "99999"), "bstop_99999.txt", 255),
    (("bresume", "99999"), "bresume_99999.txt", 255),
    (("brequeue", "99999"), "brequeue_99999.txt", 255),
    (("bjobs", "99999"), "bjobs_99999.txt", 255),
    (("bjobs", "-l", "99999"), "bjobs_l_99999.txt", 255),
    (("bjobs", "-o", "jobid stat", "-json", "99999"), "bjobs_o_jobid_stat_json_99999.txt", 255),
    (("bjobs", "-o", "badfield", "-json"), "bjobs_o_badfield_json.txt", 99),
    (("bkill", "abc"), "bkill_abc.txt", 255),
    (("bjobs", "-q", "nosuch"), "bjobs_q_nosuch.txt", 255),
    (("bhosts", "nosuchhost"), "bhosts_nosuchhost.txt", 255),
    (("bhist", "99999"), "bhist_99999.txt", 255),
])
def test_messages_are_the_real_ones(cluster, argv, sample, rc):
    assert run(cluster, *argv) == (rc, ol(sample))


def test_a_user_without_jobs(cluster):
    assert run(cluster, "bjobs", user="gwbob") == (254, ol("bjobs__2.txt"))
    assert run(cluster, "bjobs", "-o", "jobid stat", "-json", user="gwbob") == (255, ol("bjobs_o_jobid_stat_json.txt"))


def test_listing_layouts(cluster):
    running = submit(cluster, "-J", "sleeper1", "-q", "normal", "-o", "/dev/null", "sleep", "60")
    pending = submit(cluster, "-J", "pendme", "-n", "8", "-q", "normal", "sleep", "10")
    wait_status(cluster, running, "RUN")
    header = ol("bjobs.txt").splitlines()[0]
    rc, narrow = run(cluster, "bjobs")
    assert rc == 0 and narrow.splitlines()[0] == header
    # the columns line up as in the sample: the same character positions
    row = next(ln for ln in narrow.splitlines() if ln.startswith(running))
    sample_row = ol("bjobs.txt").splitlines()[2]          # "1       alice   RUN   normal ..."
    assert [m.start() for m in re.finditer(r"\S+", row)][:6] == \
        [m.start() for m in re.finditer(r"\S+", sample_row)][:6]
    rc, wide = run(cluster, "bjobs", "-w")
    pend_row = next(ln for ln in wide.splitlines() if ln.startswith(pending))
    sample_pend = ol("bjobs_w.txt").splitlines()[3]        # "5 ... vm             -        pendme"
    assert pend_row.index(" -  ") == sample_pend.index(" -  ")
    rc, js = run(cluster, "bjobs", "-o", "jobid user stat queue from_host exec_host job_name submit_time start_time", "-json")
    skeleton = re.sub(r'":\t("[^"]*"|\d+)', '":\tV', js)
    sample = re.sub(r'":\t("[^"]*"|\d+)', '":\tV', ol("bjobs_o_jobid_user_stat_queue_from_host_exec_host_job_name_s.txt"))
    assert skeleton.splitlines()[:13] == sample.splitlines()[:13]
    for jid in (running, pending):
        run(cluster, "bkill", jid)


def test_job_actions_and_their_errors(cluster):
    jid = submit(cluster, "-J", "s", "-o", "/dev/null", "sleep", "60")
    wait_status(cluster, jid, "RUN")
    assert run(cluster, "bstop", jid) == (0, ol("bstop_1.txt").replace("<1>", f"<{jid}>"))
    assert run(cluster, "bresume", jid) == (0, ol("bresume_1.txt").replace("<1>", f"<{jid}>"))
    assert run(cluster, "bkill", jid, user="gwbob") == (255, ol("bkill_2.txt").replace("<2>", f"<{jid}>"))
    assert run(cluster, "bstop", jid, user="gwbob") == (255, ol("bstop_2.txt").replace("<2>", f"<{jid}>"))
    assert run(cluster, "brequeue", jid) == (0, ol("brequeue_1.txt").replace("<1>", f"<{jid}>"))
    assert run(cluster, "bkill", "-s", "TERM", jid) == (0, ol("bkill_s_TERM_1.txt").replace("<1>", f"<{jid}>"))
    assert run(cluster, "bkill", jid)[0] == 0
    wait_status(cluster, jid, "EXIT")
    assert run(cluster, "bkill", jid) == (255, ol("bkill_5__2.txt").replace("<5>", f"<{jid}>"))


def test_brequeue_filters_as_openlavas_mbatchd(cluster):
    """OpenLava's brequeue.c and mbatchd (arrayRequeue): no option (-r) is the RUN filter,
    -d DONE, -e EXIT, -a all; two of -d/-e/-r act as -a (lsb_requeuejob). The refusals are
    mbatchd's, the last of its checks that applies; brequeue prints "Job <N> : why"."""
    def brequeue(*argv):
        rc, out = run(cluster, "brequeue", *argv)
        return rc, out.replace(f"<{argv[-1]}>", "<N>")
    held = submit(cluster, "-H", "-o", "/dev/null", "true")
    for opt in ((), ("-r",), ("-d",), ("-e",), ("-a",)):
        assert brequeue(*opt, held) == (255, "Job <N> : Job has not started yet\n"), opt
    done = submit(cluster, "-o", "/dev/null", "true")
    wait_status(cluster, done, "DONE")
    assert brequeue(done) == (255, "Job <N> : Job has already finished\n")
    assert brequeue("-e", done) == (255, "Job <N> : Bad or invalid action specification\n")
    assert brequeue("-a", done) == (0, "Job <N> is being requeued \n")
    wait_status(cluster, done, "DONE")
    assert brequeue("-e", "-r", done) == (0, "Job <N> is being requeued \n")      # widened to -a
    wait_status(cluster, done, "DONE")
    assert cluster.state()["jobs"][done]["runs"] == 3
    run(cluster, "bkill", held)


def test_bswitch_and_bmod_of_a_pending_job(cluster):
    """The sample's sequence: bswitch short 5, bmod -J renamed 5, bjobs -w 5, bkill 5."""
    jid = submit(cluster, "-J", "pendme", "-n", "8", "-q", "normal", "sleep", "10")    # 8 slots: stays PEND
    assert run(cluster, "bswitch", "short", jid) == (0, ol("bswitch_short_5.txt").replace("<5>", f"<{jid}>"))
    assert run(cluster, "bmod", "-J", "renamed", jid) == (0, ol("bmod_J_renamed_5.txt").replace("<5>", f"<{jid}>"))
    rc, out = run(cluster, "bjobs", "-w", jid)
    header, row = out.splitlines()
    sample_header, sample_row = ol("bjobs_w_5.txt").splitlines()
    assert rc == 0 and header == sample_header

    def fields(line):               # STAT QUEUE EXEC_HOST JOB_NAME (the host's name differs)
        return [t for i, t in enumerate(line.split()) if i in (2, 3, 5, 6)]
    assert fields(row) == fields(sample_row) == ["PEND", "short", "-", "renamed"]
    assert row.index(" -  ") == sample_row.index(" -  ")
    assert run(cluster, "bkill", jid) == (0, ol("bkill_5.txt").replace("<5>", f"<{jid}>"))
    wait_status(cluster, jid, "EXIT")
    _, out = run(cluster, "bjobs", "-a", "-w", jid)
    assert fields(out.splitlines()[1]) == fields(ol("bjobs_a_w.txt").splitlines()[4])    # "5 ... EXIT short"


def test_bqueues_long(cluster):
    """bqueues -l: the sample's queue byte for byte; a queue's hard run limit as OpenLava's
    prtResourceLimit prints it (lsbatch/cmd/bqueues.c), and bsub/bmod refuse more."""
    assert run(cluster, "bqueues", "-l", "vnc") == (0, ol("bqueues_l_vnc.txt"))
    rc, out = run(cluster, "bqueues", "-l", "short")
    limits = out.split("Interval for a host to accept two jobs is 0 seconds\n")[1].split("\nSCHEDULING")[0]
    assert rc == 0 and re.fullmatch(r"\n RUNLIMIT {16}\n 60\.0 min of \S+ *\n", limits) and \
        all(len(ln) == 25 for ln in limits.splitlines()[1:])
    assert run(cluster, "bsub", "-q", "short", "-W", "61", "true") == \
        (255, "RUNLIMIT: Cannot exceed queue's hard limit(s). Job not submitted.\n")
    jid = submit(cluster, "-q", "short", "-W", "60", "-H", "true")
    assert run(cluster, "bmod", "-W", "61", jid) == (255, "RUNLIMIT: Cannot exceed queue's hard limit(s). Job not modified.\n")
    assert run(cluster, "bmod", "-W", "61", jid, user="gwadmin")[0] == 255      # administrators too
    run(cluster, "bkill", jid)


def test_output_file_report_and_bpeek_layout(cluster):
    jid = submit(cluster, "-J", "quick", "-q", "short", "-o", "quick_%J.out", "echo quick done; id -un")
    wait_status(cluster, jid, "DONE")
    with open(f"/home/gwalice/quick_{jid}.out", "rb") as fh:
        got = fh.read()
    os.unlink(f"/home/gwalice/quick_{jid}.out")
    want = fixture_bytes("openlava-2.2/quick_3.out")

    def skeleton(data: bytes):
        text = data.decode()
        text = re.sub(r"\d{2}:\d{2}:\d{2} \d{4}", "T", re.sub(r"<[^>]*>", "<>", text))
        return [re.sub(r"\d+", "N", re.sub(r"\b(alice|gwalice)\b", "U", ln)) for ln in text.splitlines()
                if not ln.startswith(("Started at", "Results reported", "    CPU time"))]
    assert skeleton(got) == skeleton(want)
    jid = submit(cluster, "-J", "vncjob", "-o", "/tmp/gw-aip-fid-%J.out", "-e", "/tmp/gw-aip-fid-%J.err",
                 "echo hello from $LSB_JOBID; sleep 30")
    wait_status(cluster, jid, "RUN")
    deadline = time.monotonic() + 10
    while True:
        rc, out = run(cluster, "bpeek", jid)
        if out.startswith("hello") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (rc, out) == (0, ol("bpeek_2.txt").replace("from 2 on vm", f"from {jid}"))
    run(cluster, "bkill", jid)


def test_daemons_down(cluster):
    cluster.stop_daemon()
    try:
        for argv, sample in ((("bjobs",), "LSB_NTRIES_1_timeout_20_bjobs.txt"),
                             (("bhosts",), "LSB_NTRIES_1_timeout_20_bhosts.txt"),
                             (("bqueues",), "LSB_NTRIES_1_timeout_20_bqueues.txt"),
                             (("bsub", "sleep", "1"), "LSB_NTRIES_1_timeout_20_bsub_sleep_1.txt"),
                             (("bkill", "1"), "LSB_NTRIES_1_timeout_20_bkill_1.txt")):
            assert run(cluster, *argv) == (255, ol(sample))
    finally:
        cluster.start_daemon()


def test_c_style_submission_messages(cluster):
    rc, out = run(cluster, "csub", "true")
    assert rc == 0 and re.fullmatch(r"Job \d+ has been submitted to the default queue \[normal\]\.\n", out)
    rc, out = run(cluster, "csub", "-q", "short", "true")
    assert rc == 0 and re.fullmatch(r"Job \d+ has been submitted to queue \[short\]\.\n", out)
    cluster.fail_auth(True)
    try:
        assert run(cluster, "csub", "true") == (0, fixture_bytes("skyform-aip/csub_auth_failed_rc0.txt").decode())
    finally:
        cluster.fail_auth(False)
