"""JobChange.checked: the rules of PATCH /jobs/{id} that every plugin applies to a fresh look."""
from __future__ import annotations

import pytest

from gateway.errors import Conflict, Forbidden, InvalidInput
from gateway.models import Job, JobChange, JobState


def _job(state, limit=30, queue="normal"):
    return Job(job_id="7", state=JobState(state), queue=queue, time_limit_minutes=limit)


@pytest.mark.parametrize("state", ["COMPLETED", "FAILED", "CANCELLED"])
def test_an_ended_job_does_not_change_even_for_an_administrator(state):
    with pytest.raises(Conflict):
        JobChange(name="x").checked(_job(state), is_admin=True)


@pytest.mark.parametrize("state,moves", [("PENDING", True), ("HELD", True), ("RUNNING", False),
                                         ("SUSPENDED", False), ("UNKNOWN", False)])
def test_only_a_waiting_job_moves_and_its_own_queue_is_no_move(state, moves):
    change = JobChange(queue="short")
    if moves:
        assert change.checked(_job(state), is_admin=False) == change
    else:
        with pytest.raises(Conflict):
            change.checked(_job(state), is_admin=True)
    assert JobChange(queue="normal", name="n").checked(_job(state), is_admin=False) == JobChange(name="n")


def test_a_started_jobs_limit_is_raised_by_an_administrator_only():
    running = _job("RUNNING", limit=30)
    with pytest.raises(Forbidden):
        JobChange(time_limit_minutes=40).checked(running, is_admin=False)
    assert JobChange(time_limit_minutes=40).checked(running, is_admin=True).time_limit_minutes == 40
    assert JobChange(time_limit_minutes=20).checked(running, is_admin=False).time_limit_minutes == 20
    # A waiting job's is the owner's to raise (as far as the queue allows).
    assert JobChange(time_limit_minutes=90).checked(_job("PENDING"), is_admin=False).time_limit_minutes == 90
    # A job without a limit runs unlimited: any limit lowers it.
    assert JobChange(time_limit_minutes=5).checked(_job("RUNNING", limit=None), is_admin=False) == \
        JobChange(time_limit_minutes=5)


def test_the_queues_limit_binds_users_not_administrators():
    with pytest.raises(InvalidInput) as exc:
        JobChange(time_limit_minutes=61).checked(_job("PENDING"), is_admin=False, queue_limit=60)
    assert list(exc.value.errors) == ["timeLimitMinutes"]
    for change, kw in [(JobChange(time_limit_minutes=60), dict(is_admin=False, queue_limit=60)),
                       (JobChange(time_limit_minutes=61), dict(is_admin=True, queue_limit=60)),
                       (JobChange(time_limit_minutes=5000), dict(is_admin=False, queue_limit=None))]:
        assert change.checked(_job("PENDING"), **kw) == change
    # Lowering a limit an administrator set beyond the queue's is the owner's to do.
    assert JobChange(time_limit_minutes=300).checked(_job("RUNNING", limit=600), is_admin=False,
                                                     queue_limit=60) == JobChange(time_limit_minutes=300)


@pytest.mark.parametrize("limit", [600, None])
def test_a_move_takes_the_jobs_limit_into_the_new_queue(limit):
    job = _job("PENDING", limit=limit)
    with pytest.raises(InvalidInput, match="give timeLimitMinutes with the move"):
        JobChange(queue="short").checked(job, is_admin=False, queue_limit=60)
    assert JobChange(queue="short", time_limit_minutes=60).checked(job, is_admin=False, queue_limit=60) == \
        JobChange(queue="short", time_limit_minutes=60)
    assert JobChange(queue="short").checked(job, is_admin=True, queue_limit=60) == JobChange(queue="short")
    assert JobChange(queue="short").checked(_job("PENDING", limit=30), is_admin=False, queue_limit=60) == \
        JobChange(queue="short")
