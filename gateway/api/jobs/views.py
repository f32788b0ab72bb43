"""Jobs: submit, list, detail (with long polling), changes, control actions, output."""
from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import os
import re
import secrets
import socket
import time
from contextlib import contextmanager

from flask import g, jsonify, request
from flask.views import MethodView

from ...errors import BadRequest, Conflict, Forbidden, GatewayError, InvalidInput, NotFound
from ...models import FINAL_STATES, JOB_ACTIONS, JobQuery, User
from ..common import Blueprint, current_user, document_errors, gw, ok
from .schemas import (ActionEnvelope, JobChangeSchema, JobEnvelope, JobListEnvelope, JobListQuerySchema, JobSpecSchema,
                      JobWaitQuerySchema, OutputEnvelope, OutputQuerySchema, SubmitEnvelope, job_json)

log = logging.getLogger("gateway.jobs")

blp = Blueprint("jobs", __name__, url_prefix="/jobs", description="Batch jobs: submit, follow, control, read output")

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\[\]-]{0,63}\Z")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,128}\Z")


def _check_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise NotFound(f"no such job: {job_id[:64]!r}")
    return job_id


def may_see(user: User, owner: str | None) -> bool:
    return user.is_admin or owner == user.name or gw().config["list_all_jobs"]


def may_control(user: User, owner: str | None) -> bool:
    return user.is_admin or owner == user.name


def fetch_job(user: User, job_id: str, *, control: bool = False, doing: str | None = None):
    """The job, once the caller is known to be allowed to see (or, ``control``, to act on or
    read into) it; ``doing`` words the refusal ("read the output of")."""
    job = gw().scheduler.call("get_job", user=user, job_id=_check_id(job_id))
    allowed = may_control(user, job.user_name) if control else may_see(user, job.user_name)
    if not allowed:
        doing = doing or ("control" if control else "see")
        raise Forbidden(f"job {job_id} belongs to {job.user_name}: you may only {doing} your own jobs")
    return job


_LEADING_DIGITS = re.compile(r"\d+")


def _sort_key(job):
    jid = job.job_id
    num = _LEADING_DIGITS.match(jid)
    return (job.submit_time.timestamp() if job.submit_time else 0.0, int(num.group()) if num else 0, jid)


# Idempotent submission -------------------------------------------------------------------
#
# The key's record lives in the session store (shared by every replica) with a TTL:
#   {"state": "done", "jobId": ..., "fp": ...}                       the answer for every retry
#   {"state": "pending", "since": t0, "settle": t1, "by": ..., "fp": ...}   a submission under way
# A request claims a fresh key atomically (SET NX), submits, then swaps its own pending
# record for the done one (compare-and-set: a record someone else replaced is never
# overwritten). A definite refusal (4xx, 501, 502: the scheduler took nothing) deletes the
# claim so the key may be used again. Anything else leaves it pending: the submission may or
# may not have reached the scheduler.
#
# A pending record whose owner died (replica SIGKILLed mid-request) must neither block the
# key forever nor be resubmitted blindly. Until ``settle`` (the claim time plus
# ``idempotency_pending_seconds``, longer than any submission can take, so the dead owner's
# orphaned command has finished by then; or, after an ambiguous error seen by a live owner,
# IDEMPOTENCY_ERROR_GRACE seconds after it) a retry answers 409 "in progress" with
# Retry-After. After it, the retry asks the scheduler: the user's jobs (with the spec's name,
# when it has one) submitted since the claim. None: nothing reached the scheduler, and the
# retry takes the claim over (compare-and-set, so only one retry does) and submits. Some:
# the scheduler may hold the first attempt; the gateway cannot tell it from another job of
# the same name, so it answers 409 naming those jobs (``errors.candidates``) and submits
# nothing. Never two jobs for one key; never a key stuck longer than the window.
IDEMPOTENCY_PENDING_SECONDS = 300
IDEMPOTENCY_ERROR_GRACE = 30
IDEMPOTENCY_CLOCK_SKEW = 30      # scheduler clock vs gateway clock, when matching submit times


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _fingerprint(hook: str) -> str:
    body = request.get_json(silent=True)
    text = json.dumps([hook, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _idem_record(raw: str) -> dict:
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict):        # an older release stored the bare job id
        return {"state": "done", "jobId": raw}
    return record


def _settle_candidates(user: User, spec, since: float) -> list[str]:
    """Jobs of ``user`` that may be the interrupted submission (submitted since its claim)."""
    name = getattr(spec, "name", None)
    jobs = gw().scheduler.call("list_jobs", user=user, query=JobQuery(user=user.name, name=name))
    earliest = since - IDEMPOTENCY_CLOCK_SKEW
    return sorted((j.job_id for j in jobs
                   if j.user_name in (None, user.name) and (name is None or j.name == name)
                   and (j.submit_time is None or j.submit_time.timestamp() >= earliest)),
                  key=lambda jid: (len(jid), jid))


def submit_with_idempotency(hook: str, spec):
    """Submit once per Idempotency-Key: a retry (on any replica) answers the first job's id."""
    state = gw()
    user = current_user()
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return state.scheduler.call(hook, user=user, spec=spec)
    if not IDEMPOTENCY_KEY_RE.match(key):
        raise BadRequest("Idempotency-Key must be 1 to 128 printable ASCII characters without spaces")
    store = state.store
    store_key = f"idem:{user.name}:{key}"
    ttl = state.config["idempotency_ttl_seconds"]
    window = float(state.config.get("idempotency_pending_seconds") or IDEMPOTENCY_PENDING_SECONDS)
    fingerprint = _fingerprint(hook)
    now = time.time()
    claim = {"state": "pending", "since": now, "settle": now + window,
             "by": f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}", "fp": fingerprint}
    mine = dumps(claim)
    earlier = store.remember(store_key, mine, ttl)
    if earlier is not None:
        record = _idem_record(earlier)
        if record.get("fp") not in (None, fingerprint):
            raise InvalidInput("this Idempotency-Key was already used with a different request: "
                               "use a new key for a new submission",
                               errors={"Idempotency-Key": ["used with a different request"]})
        if record.get("state") == "done":
            return record["jobId"]
        settle = float(record.get("settle") or 0)
        if now < settle:
            raise Conflict(
                f"a submission with this Idempotency-Key is in progress (since {now - float(record.get('since', now)):.0f} s): "
                "retry with the same key in a moment",
                errors={"Idempotency-Key": ["in progress"]},
                headers={"Retry-After": str(max(1, min(5, math.ceil(settle - now))))})
        # The attempt that claimed the key ended without an answer: the scheduler decides.
        candidates = _settle_candidates(user, spec, float(record.get("since", now)))
        if candidates:
            raise Conflict(
                "an earlier submission with this Idempotency-Key was interrupted and may have reached the "
                f"scheduler: it holds job(s) {', '.join(candidates[:20])} submitted since then. Check them; "
                "if none is yours, submit again with a new key",
                errors={"Idempotency-Key": ["interrupted; outcome unknown"], "candidates": candidates[:100]})
        if not store.swap(store_key, earlier, mine, ttl):
            raise Conflict("another retry with this Idempotency-Key is taking over the interrupted "
                           "submission: retry with the same key in a moment",
                           errors={"Idempotency-Key": ["in progress"]}, headers={"Retry-After": "1"})
        log.warning("Idempotency-Key %r of %s: the attempt by %s was interrupted before the scheduler "
                    "took the job; submitting it now", key, user.name, record.get("by"))
    try:
        job_id = str(state.scheduler.call(hook, user=user, spec=spec))
    except GatewayError as exc:
        if exc.status < 500 or exc.status in (501, 502):
            store.swap(store_key, mine, None, ttl)      # the scheduler took nothing: free the key
        else:
            _settle_soon(store, store_key, claim, mine, ttl)
        raise
    except BaseException:
        _settle_soon(store, store_key, claim, mine, ttl)
        raise
    if not store.swap(store_key, mine, dumps({"state": "done", "jobId": job_id, "fp": fingerprint}), ttl):
        # Only possible when this submission outlived idempotency_pending_seconds and a retry
        # took the key over: the window is shorter than the scheduler's slowest submission.
        log.error("Idempotency-Key %r of %s: job %s was submitted after the key had been taken over "
                  "(idempotency_pending_seconds %g s is too short for this scheduler)",
                  key, user.name, job_id, window)
    return job_id


def _settle_soon(store, store_key, claim, mine, ttl) -> None:
    """After an ambiguous error the owner is alive: let retries settle the key after a short grace."""
    settle = min(claim["settle"], time.time() + IDEMPOTENCY_ERROR_GRACE)
    try:
        store.swap(store_key, mine, dumps({**claim, "settle": settle}), ttl)
    except Exception:                      # the store is down too: the full window applies
        log.warning("could not shorten the settle time of %s", store_key, exc_info=True)


# For generated clients and Swagger UI's "Try it out" (the header is read by
# submit_with_idempotency, not by a schema).
IDEMPOTENCY_KEY_PARAMETER = {
    "in": "header", "name": "Idempotency-Key", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$"},
    "description": "makes retries safe: the same key answers the first submission's job id and "
                   "never creates a second job (printable ASCII, no spaces)"}


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(JobSpecSchema)
    @blp.doc(parameters=[IDEMPOTENCY_KEY_PARAMETER])
    @blp.response(200, SubmitEnvelope)
    @document_errors(blp, 400, 401, 403, 408, 409, 413, 415, 422, 501, 502, 503, 504)
    def post(self, spec):
        """Submit a job

        Send an `Idempotency-Key` header to make retries safe: the same key answers the
        first job's id and never creates a second job."""
        job_id = submit_with_idempotency("submit_job", spec)
        g.audit_job = str(job_id)                  # the audit line names the new job
        return ok({"job": {"job_id": str(job_id)}})

    @blp.arguments(JobListQuerySchema(), location="query")   # an instance: not one per request
    @blp.response(200, JobListEnvelope)
    @document_errors(blp, 401, 403, 422, 501, 502, 503, 504)
    def get(self, args):
        """List jobs (yours; admins: everyone's), newest first, with filters and pagination"""
        state = gw()
        user = current_user()
        wanted = args.get("user")
        if wanted == "all":
            wanted = None
        elif wanted is None and not (user.is_admin or state.config["list_all_jobs"]):
            wanted = user.name
        if wanted != user.name and not (user.is_admin or state.config["list_all_jobs"]):
            raise Forbidden("you may only list your own jobs")
        query = JobQuery(user=wanted, states=args.get("state") or None,
                         queue=args.get("queue"), name=args.get("name"))
        jobs = state.scheduler.call("list_jobs", user=user, query=query)
        # The plugin filters; the core re-checks, so a plugin's slip cannot leak jobs.
        jobs = [j for j in jobs if (query.user is None or j.user_name == query.user)
                and may_see(user, j.user_name)
                and (not query.states or j.state in query.states)
                and (query.queue is None or j.queue == query.queue)
                and (query.name is None or j.name == query.name)]
        jobs.sort(key=_sort_key, reverse=True)
        limit = min(args.get("limit") or state.config["page_size"], state.config["max_page_size"])
        offset = args["offset"]
        # Dumped by hand (job_json), not by JobListEnvelope: same JSON, ~8x less CPU.
        return jsonify(ok({"jobs": [job_json(j) for j in jobs[offset:offset + limit]],
                           "total": len(jobs), "offset": offset, "limit": limit}))


SHORT_WAIT = 1.0                       # seconds, a long poll beyond max_waits_per_user
WAIT_HEADER = "X-Wait-Seconds"


@blp.route("/<job_id>")
class JobDetail(MethodView):
    @blp.arguments(JobWaitQuerySchema(), location="query")
    @blp.response(200, JobEnvelope, headers={WAIT_HEADER: {
        "description": "with wait > 0, when the job had not changed at the request: the seconds this "
                       "poll was allowed to wait (the wait asked, at most max_wait_seconds; at most 1 "
                       "for a poll beyond the user's max_waits_per_user)",
        "schema": {"type": "number"}}})
    @document_errors(blp, 401, 403, 404, 422, 501, 502, 503, 504)
    def get(self, args, job_id):
        """One job; with `wait=N` answer as soon as its state changes (long polling)

        The change is measured against `since` when given (the state the client last saw),
        else against the state at the time of the request. A final state answers at once."""
        state = gw()
        user = current_user()
        job = fetch_job(user, job_id)
        wait = min(args["wait"], state.config["max_wait_seconds"])
        baseline = args.get("since") or job.state
        if wait <= 0 or job.state != baseline or job.state in FINAL_STATES:
            return jsonify(ok({"job": job_json(job)}))
        with _wait_slot(state, user.name) as full:
            # Beyond the user's share of this worker's threads a poll still answers, after
            # SHORT_WAIT at most: the client polls again, and nobody's thread is held for long.
            granted = wait if full else min(wait, SHORT_WAIT)
            response = _watch(state, user, job_id, job, baseline, granted)
            # What the poll was allowed: a client can tell max_wait_seconds or a cut poll (one
            # beyond max_waits_per_user) from a job that did not change.
            response.headers[WAIT_HEADER] = f"{granted:g}"
            return response

    @blp.arguments(JobChangeSchema)
    @blp.response(200, JobEnvelope)
    @document_errors(blp, 400, 401, 403, 404, 408, 409, 413, 415, 422, 501, 502, 503, 504)
    def patch(self, change, job_id):
        """Change a job: its name, its queue (while it waits) or its time limit

        Give one or more of `name`, `queue` and `timeLimitMinutes`; the answer is the job as
        the scheduler now has it. A job that has ended cannot change (409), nor can the queue
        of one that has started (409). The owner may lower a time limit at any time, and raise
        that of a waiting job as far as the queue allows (beyond: 422); only an administrator
        may raise the limit of a job that has started (403). A user's job moves with its time
        limit, which must fit the new queue (422; give `timeLimitMinutes` with the move). A
        change the scheduler refuses is answered in its own words: 422 (a value), 403 (a
        queue the user may not use), 409 (the job's state), 502 (anything else, or a
        misconfigured gateway). On AIP/LSF a name may not contain `[ ] < >`, and LSF renames
        no started job nor array and moves no array."""
        state = gw()
        user = current_user()
        fetch_job(user, job_id, control=True, doing="change")
        # The rules on the job's state (JobChange.checked) are the plugin's to apply, on a
        # fresh look: what get_job answered may be a snapshot a moment old.
        state.scheduler.call("modify_job", user=user, job_id=job_id, change=change)
        return ok({"job": state.scheduler.call("get_job", user=user, job_id=job_id)})


@contextmanager
def _wait_slot(state, user_name: str):
    """True when the poll may wait its full time: one of the user's max_waits_per_user here."""
    full = state.waits.take(user_name, state.config["max_waits_per_user"])
    try:
        yield full
    finally:
        if full:
            state.waits.give_back(user_name)


def _watch(state, user, job_id, job, baseline, wait):
    """The long poll itself: the job's answer once its state leaves ``baseline``, or at the end."""
    deadline = time.monotonic() + wait
    # Back off from 50 ms to 1 s between looks. A look costs the scheduler nothing: the
    # plugin answers from a snapshot, a local database, or (job_state) a listing it
    # keeps for every caller; the job itself is fetched again only for the answer.
    watch = state.scheduler.implements("job_state")
    interval = 0.05
    current = True                           # `job` is the latest look's
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        with state.turns.waiting():          # a sleeping long poll holds no turn
            time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, 1.0)
        if watch and state.scheduler.call("job_state", user=user, job_id=job_id) == baseline:
            current = False                  # the listing says no change: nothing fetched
            continue
        # No listing answer, or it says the job changed: the job itself decides (a listing
        # behind the job is no change).
        job = state.scheduler.call("get_job", user=user, job_id=job_id)
        current = True
        if job.state != baseline:
            break
    if not current:
        job = state.scheduler.call("get_job", user=user, job_id=job_id)
    return jsonify(ok({"job": job_json(job)}))


@blp.route("/<job_id>/<any({}):action>".format(",".join(JOB_ACTIONS)))
class JobAction(MethodView):
    @blp.response(200, ActionEnvelope)
    @document_errors(blp, 401, 403, 404, 409, 501, 502, 503, 504)
    def post(self, job_id, action):
        """Control a job: kill, suspend, resume, requeue, hold or release

        A job suspended by an administrator or by the scheduler itself (preemption) is
        resumed by an administrator only: 403 for its owner."""
        state = gw()
        user = current_user()
        job = fetch_job(user, job_id, control=True)
        if job.state in FINAL_STATES and action != "requeue":
            raise Conflict(f"job {job_id} has already finished ({job.state}): cannot {action} it")
        state.scheduler.call("control_job", user=user, job_id=job_id, action=action)
        job = state.scheduler.call("get_job", user=user, job_id=job_id)
        return ok({"job": job, "action": action})


@blp.route("/<job_id>/output")
class JobOutputView(MethodView):
    @blp.arguments(OutputQuerySchema, location="query")
    @blp.response(200, OutputEnvelope)
    @document_errors(blp, 401, 403, 404, 422, 501, 502, 503, 504)
    def get(self, args, job_id):
        """Read a job's stdout or stderr from `offset`, at most `limit` bytes

        Follow a running job by asking again from `nextOffset`."""
        user = current_user()
        fetch_job(user, job_id, control=True, doing="read the output of")
        out = gw().scheduler.call("job_output", user=user, job_id=job_id, stream=args["stream"],
                                  offset=args["offset"], limit=args["limit"])
        # Stop before a UTF-8 character cut in two by `limit`: the next read starts with it.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(out.data, final=False)
        pending = len(decoder.getstate()[0])
        if pending == len(out.data) or (out.size is not None and out.offset + len(out.data) >= out.size):
            text += decoder.decode(b"", final=True)    # the file really ends here
            pending = 0
        return ok({"output": {
            "job_id": job_id, "stream": args["stream"], "offset": out.offset,
            "next_offset": out.offset + len(out.data) - pending, "size": out.size, "data": text,
        }})
