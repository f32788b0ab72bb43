"""Capture the fixtures of tests/plugins/slurm_ssm/ from the real single-node Slurm.

    GATEWAY_SLURM_FIRST_JOB_ID=26 tests/cluster/slurm.sh up     # on a fresh state directory
    .venv/bin/python tests/plugins/slurm_ssm/capture_fixtures.py [--quick]

Runs as root on the test cluster (users gwalice and gwbob must exist): puts jobs into
every state the parsers must understand (completed, failed, timed out, cancelled, running,
suspended, held by the user and by an admin, pending on a dependency, an array with
running and pending tasks, a unicode name), then records each command's argv, the user it
ran as, its exit code, stdout and stderr as fixtures/<name>.json. Every argv that the plugin
itself runs is built by gateway_slurm_ssm.commands, so the fixtures are what the parsers see
in production. Run it on a fresh state directory with GATEWAY_SLURM_FIRST_JOB_ID=26 (the ids
the tests name). ``--quick`` skips the one-minute wait for a TIMEOUT job; ``--ctld-down`` also stops slurmctld
for a moment to record what the commands say when the controller is down. ``--updates``
records only the job changes (update_*.json). ``--service``
records only the run_as: service listings (service_*.json: jobs of the service account
gwbob tagged for gateway users, and tags nobody may trust), leaving the others as they are.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
sys.path.insert(0, str(HERE.parents[2] / "plugins" / "slurm_ssm"))

from gateway_slurm_ssm import commands  # noqa: E402

ALICE, BOB = "gwalice", "gwbob"


def run(argv, as_user=None, stdin=None):
    full = (["sudo", "-n", "-u", as_user, "--"] if as_user else []) + list(argv)
    proc = subprocess.run(full, input=stdin, capture_output=True, timeout=60, cwd="/tmp")
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def save(name, argv, as_user=None, stdin=None, note=None):
    rc, out, err = run(argv, as_user, stdin)
    record = {"argv": list(argv), "as_user": as_user, "returncode": rc, "stdout": out, "stderr": err}
    if stdin is not None:
        record["stdin"] = stdin.decode("utf-8", "replace")
    if note:
        record["note"] = note
    (FIXTURES / f"{name}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"{name}: rc={rc} {err.strip()[:100]!r}")
    return rc, out, err


def sbatch(as_user, *opts, script="#!/bin/sh\nsleep 300\n"):
    rc, out, err = run(["sbatch", "--parsable", "--chdir=/tmp", *opts], as_user, script.encode())
    assert rc == 0, err
    return out.strip().split(";")[0]


def wait_state(job_id, states, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rc, out, _ = run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"])
        if out.strip() in states:
            return
        time.sleep(0.3)
    raise SystemExit(f"job {job_id} did not reach {states}")


def capture_service():
    """run_as: service's listings, with the service account gwbob: its jobs carry their
    gateway user as the comment (commands.owner_comment); gwalice's forged tag and gwbob's
    own untagged or differently commented jobs must not be read as anyone's."""
    tag = commands.owner_comment
    held = "#!/bin/sh\ntrue\n"
    jobs = [sbatch(BOB, "--hold", "--job-name=for-carol", f"--comment={tag('carol')}", script=held),
            sbatch(BOB, "--hold", "--job-name=for-dave", f"--comment={tag('dave')}", script=held),
            sbatch(BOB, "--hold", "--job-name=untagged", script=held),
            sbatch(BOB, "--hold", "--job-name=other-comment", "--comment=project x", script=held),
            sbatch(ALICE, "--hold", "--job-name=forged", f"--comment={tag('carol')}", script=held),
            sbatch(BOB, "--hold", "--job-name=array-carol", "--array=1-3", f"--comment={tag('carol')}",
                   script=held)]
    save("service_squeue_json", commands.squeue_json())
    save("service_squeue_format", commands.squeue_format(commands.SERVICE_FORMAT_FIELDS))
    for j in jobs:
        run(["scancel", j])
    print("service fixtures written to", FIXTURES)


def capture_updates():
    """Changes to jobs (scontrol update JobId=..., what PATCH /jobs/{id} runs) and their
    refusals, as the owner gwalice unless named: the batch partition has MaxTime 2 days."""
    from gateway.models import JobChange
    held = sbatch(ALICE, "--hold", "--job-name=to-change", "--time=30")
    running = sbatch(ALICE, "--job-name=running", "--time=30")
    wait_state(running, {"RUNNING"})
    done = sbatch(ALICE, "--job-name=done", script="#!/bin/sh\ntrue\n")
    wait_state(done, {"COMPLETED"})
    update = commands.update_job
    save("update_ok", update(held, JobChange(name="renamed; $(x)", queue="batch", time_limit_minutes=45)), ALICE)
    save("update_bad_partition", update(held, JobChange(queue="nosuch")), ALICE)
    save("update_beyond_max_time", update(held, JobChange(time_limit_minutes=5000)), ALICE)
    save("update_not_yours", update(held, JobChange(name="x")), BOB)
    save("update_invalid", update("999999", JobChange(name="x")), ALICE)
    save("update_running_partition", update(running, JobChange(name="partial", queue="batch")), ALICE)
    save("update_running_raise", update(running, JobChange(time_limit_minutes=40)), ALICE)
    save("update_finished", update(done, JobChange(name="late")), ALICE)
    for j in (held, running):
        run(["scancel", j])
    print("update fixtures written to", FIXTURES)


def main():
    if "--service" in sys.argv:
        return capture_service()
    if "--updates" in sys.argv:
        return capture_updates()
    quick = "--quick" in sys.argv
    FIXTURES.mkdir(exist_ok=True)
    ok = "#!/bin/sh\necho out; echo err >&2\n"

    # Jobs in every state the parsers must understand.
    timeout_job = None if quick else sbatch(ALICE, "--job-name=timeout", "--time=1",
                                            script="#!/bin/sh\nsleep 600\n")
    done = sbatch(ALICE, "--job-name=done", "--output=/tmp/fx-%j.out", script=ok)
    failed = sbatch(ALICE, "--job-name=failed", script="#!/bin/sh\nexit 3\n")
    killed = sbatch(ALICE, "--job-name=signalled", script="#!/bin/sh\nkill -TERM $$\nsleep 5\n")
    running = sbatch(ALICE, "--job-name=running", "--partition=batch", "--time=30",
                     "--output=/tmp/fx-run-%x-%j.out", "--error=/tmp/fx-run-%j.err")
    suspended = sbatch(BOB, "--job-name=suspended", "--cpus-per-task=2", "--mem=100M")
    cancelled = sbatch(BOB, "--job-name=cancelled")
    held_user = sbatch(ALICE, "--job-name=held-user", "--hold")
    held_admin = sbatch(BOB, "--job-name=held-admin")
    dependent = sbatch(ALICE, "--job-name=dependent", f"--dependency=afterok:{running}",
                       "--cpus-per-task=2", "--mem-per-cpu=30M")
    array = sbatch(ALICE, "--job-name=array", "--array=1-4%2")
    unicode_name = sbatch(BOB, "--job-name=データ|;$(x)", "--hold")
    for j in (done, failed, killed):
        wait_state(j, {"COMPLETED", "FAILED", "CANCELLED"})
    for j in (running, suspended):
        wait_state(j, {"RUNNING"})
    run(["scontrol", "suspend", suspended])
    run(["scancel", cancelled], BOB)
    run(["scontrol", "hold", held_admin])
    if timeout_job:
        print("waiting for the TIMEOUT job (about 90 s)")
        wait_state(timeout_job, {"TIMEOUT"}, timeout=200)
    time.sleep(1)

    save("squeue_json", commands.squeue_json())
    save("squeue_format", commands.squeue_format())
    save("squeue_version", commands.version())
    save("sinfo_json", commands.sinfo_json())
    save("scontrol_show_node", commands.show_nodes())
    save("scontrol_show_partition", commands.show_partitions())
    save("scontrol_show_config", commands.show_config())
    save("scontrol_ping", commands.ping())
    save("scontrol_show_job_failed", commands.show_job(failed))
    save("scontrol_show_job_signalled", commands.show_job(killed))
    save("getent_passwd", commands.getent_passwd(ALICE))
    save("getent_passwd_unknown", commands.getent_passwd("nosuchuser"))

    # Submission: success and refusals.
    save("sbatch_ok", ["sbatch", "--parsable", "--chdir=/tmp", "--job-name=fx", "--hold"], ALICE, ok.encode())
    save("sbatch_bad_partition", ["sbatch", "--parsable", "--partition=nosuch"], ALICE, ok.encode())
    save("sbatch_bad_mem", ["sbatch", "--parsable", "--mem=abc"], ALICE, ok.encode())
    save("sbatch_too_much_mem", ["sbatch", "--parsable", "--mem=100000"], ALICE, ok.encode())
    save("sbatch_too_many_nodes", ["sbatch", "--parsable", "--nodes=5"], ALICE, ok.encode())
    save("sbatch_bad_time", ["sbatch", "--parsable", "--time=abc"], ALICE, ok.encode())
    save("sbatch_bad_array", ["sbatch", "--parsable", "--array=abc"], ALICE, ok.encode())
    save("sbatch_bad_dependency", ["sbatch", "--parsable", "--dependency=afterok:999999"], ALICE, ok.encode())
    save("sbatch_not_a_script", ["sbatch", "--parsable"], ALICE, b"echo no shebang\n")
    save("sbatch_empty_script", ["sbatch", "--parsable"], ALICE, b"")
    save("sbatch_missing_file", ["sbatch", "--parsable", "--", "/nonexistent/job.sh"], ALICE)
    save("sbatch_unknown_option", ["sbatch", "--parsable", "--no-such-option"], ALICE, ok.encode())
    save("sbatch_unknown_user", ["sbatch", "--parsable"], "nosuchuser", ok.encode())
    run(["scontrol", "update", "partitionname=batch", "state=drain"])
    save("sbatch_partition_drained", ["sbatch", "--parsable", "--partition=batch"], ALICE, ok.encode())
    run(["scontrol", "update", "partitionname=batch", "state=up"])

    # Job actions and their refusals (scancel --verbose: without it, errors are silent).
    save("scancel_invalid", commands.scancel("999999"), ALICE)
    save("scancel_finished", commands.scancel(done), ALICE)
    save("scancel_denied", commands.scancel(held_user), BOB)
    save("scancel_ok", commands.scancel(held_user), ALICE)
    save("suspend_as_user", commands.job_action("suspend", running), ALICE)
    save("suspend_pending", commands.job_action("suspend", dependent))
    save("resume_running", commands.job_action("resume", running))
    save("resume_invalid", commands.job_action("resume", "999999"))
    save("suspend_finished", commands.job_action("suspend", done))
    save("hold_finished", commands.job_action("hold", done), ALICE)
    save("hold_invalid", commands.job_action("hold", "999999"), ALICE)
    save("release_admin_hold_as_user", commands.job_action("release", held_admin), BOB)
    save("release_not_held", commands.job_action("release", dependent), ALICE)
    save("requeue_pending", commands.job_action("requeue", dependent), ALICE)
    save("requeue_invalid", commands.job_action("requeue", "999999"), ALICE)
    save("requeue_denied", commands.job_action("requeue", running), BOB)

    # Output reading (as the job's owner).
    save("stat_output", commands.stat_size(f"/tmp/fx-{done}.out"), ALICE)
    save("stat_missing", commands.stat_size("/tmp/fx-missing.out"), ALICE)
    save("dd_output", commands.read_bytes(f"/tmp/fx-{done}.out", 1, 2), ALICE)
    save("dd_missing", commands.read_bytes("/tmp/fx-missing.out", 0, 10), ALICE)

    # Hosts and queues.
    node = os.uname().nodename.split(".")[0]
    save("node_drain", commands.update_node(node, "close", reason="fixture: maintenance a=b"))
    save("sinfo_json_drained", commands.sinfo_json())
    save("scontrol_show_node_drained", commands.show_nodes())
    save("node_resume", commands.update_node(node, "open"))
    save("node_resume_again", commands.update_node(node, "open"))
    save("node_unknown", commands.update_node("nosuchnode", "close", reason="x"))
    save("node_drain_as_user", commands.update_node(node, "close", reason="x"), ALICE)
    for state in ("DOWN", "DRAIN", "INACTIVE"):
        run(["scontrol", "update", "partitionname=batch", f"state={state}"])
        save(f"scontrol_show_partition_{state.lower()}", commands.show_partitions())
    save("partition_update_ok", commands.update_partition("batch", "UP"))
    save("partition_unknown", commands.update_partition("nosuch", "UP"))

    capture_updates()

    # Clean up what this script started.
    for j in (running, suspended, held_admin, dependent, array, unicode_name):
        run(["scancel", j])

    # The controller down: stop slurmctld, capture, bring it back with slurm.sh up.
    pidfile = Path(os.environ.get("GATEWAY_SLURM_DIR", "/var/tmp/hpc-gateway-slurm")) / "run" / "slurmctld.pid"
    if "--ctld-down" in sys.argv and pidfile.exists():
        os.kill(int(pidfile.read_text()), 15)
        time.sleep(2)
        save("down_ping", commands.ping())
        save("down_squeue_json", commands.squeue_json())
        save("down_squeue_format", commands.squeue_format())
        save("down_sbatch", ["sbatch", "--parsable"], ALICE, ok.encode())
        save("down_scancel", commands.scancel("1"), ALICE)
        subprocess.run([str(HERE.parents[1] / "cluster" / "slurm.sh"), "up"], check=True)
    print("fixtures written to", FIXTURES)


if __name__ == "__main__":
    main()
