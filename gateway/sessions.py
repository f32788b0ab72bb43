"""Sessions: signed tokens checked against a shared session store.

A token is ``itsdangerous``-signed ``{"s": session id, "u": user, "c": credential stamp}``
with the secret every replica shares, so any replica can check a token another issued. The
stamp (``Authenticator.stamp``; users file: a digest of the password hash) ends the session
once the user is removed or the password changes, however the users file was edited. The store keeps each
session's last activity and revocation, so the idle timeout slides and logout is seen by
every replica. To keep the store off the hot path, an authenticated call writes its
last-activity only when the stored value is older than ``touch_interval`` (a few seconds).

The same store carries the login-failure counters and idempotency keys, which must also be
shared by replicas: SQLite (default, one host, several gunicorn workers) or Redis.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .errors import ConfigError, Unauthorized

log = logging.getLogger(__name__)


@dataclass
class Session:
    sid: str
    user: str
    created: float
    last_seen: float
    revoked: bool = False


class SessionStore:
    """Interface shared by the SQLite and Redis stores."""

    def create(self, sid: str, user: str, now: float, ttl: float) -> None: ...
    def get(self, sid: str) -> Session | None: ...
    def touch(self, sid: str, now: float, ttl: float) -> None: ...
    def revoke(self, sid: str, ttl: float) -> None: ...
    def revoke_user(self, user: str, ttl: float) -> int:
        """End every session of ``user`` (password changed, user removed); how many were live."""
    def live_count(self, now: float, timeout: float) -> int: ...
    def hit(self, key: str, window: int, now: float, amount: int = 1) -> int:
        """Count ``amount`` events for ``key`` in a fixed window (atomically); return the count
        so far. A negative ``amount`` takes back events counted earlier in the window."""
    def begin(self, key: str, entry: str, ttl: float, now: float) -> int:
        """Add ``entry`` (one thing in progress, e.g. a password check) under ``key``; return
        how many entries ``key`` holds, counting only those begun within ``ttl`` seconds: each
        expires on its own, so one never ended (a worker killed) lasts ``ttl`` at most."""
    def end(self, key: str, entry: str) -> None: ...
    def reset(self, key: str) -> None: ...
    def remember(self, key: str, value: str, ttl: int) -> str | None:
        """Store value under key unless present; return the earlier value, or None when stored."""
    def forget(self, key: str) -> None: ...
    def swap(self, key: str, expected: str, value: str | None, ttl: int) -> bool:
        """Atomically replace key's value (None: delete it) if it is still ``expected``; True if done."""
    def close(self) -> None: ...


class SqliteSessionStore(SessionStore):
    """One SQLite file in WAL mode; safe for several processes on one host."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        _private_file(path)
        self._local = threading.local()
        with self._conn() as db:
            _when_unlocked(lambda: db.executescript("""
                CREATE TABLE IF NOT EXISTS sessions(
                    sid TEXT PRIMARY KEY, user TEXT NOT NULL, created REAL NOT NULL,
                    last_seen REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
                CREATE TABLE IF NOT EXISTS counters(
                    key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS kv(
                    key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS inflight(
                    key TEXT NOT NULL, entry TEXT NOT NULL, started REAL NOT NULL,
                    PRIMARY KEY(key, entry));
            """))

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            # Switching to WAL takes the file exclusively and does not wait (no busy handler):
            # workers starting together on a new store got "database is locked" and did not
            # boot. Once the file is in WAL mode (it stays so) there is nothing to switch.
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                _when_unlocked(lambda: db.execute("PRAGMA journal_mode=WAL"))
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def create(self, sid, user, now, ttl):
        db = self._conn()
        db.execute("INSERT INTO sessions(sid, user, created, last_seen) VALUES (?,?,?,?)",
                   (sid, user, now, now))
        # Housekeeping on login, not on every request.
        db.execute("DELETE FROM sessions WHERE last_seen < ?", (now - ttl,))
        db.execute("DELETE FROM counters WHERE expires < ?", (now,))
        db.execute("DELETE FROM kv WHERE expires < ?", (now,))

    def get(self, sid):
        row = self._conn().execute(
            "SELECT sid, user, created, last_seen, revoked FROM sessions WHERE sid=?", (sid,)).fetchone()
        return Session(row[0], row[1], row[2], row[3], bool(row[4])) if row else None

    def touch(self, sid, now, ttl):
        self._conn().execute("UPDATE sessions SET last_seen=? WHERE sid=? AND last_seen<?", (now, sid, now))

    def revoke(self, sid, ttl):
        self._conn().execute("UPDATE sessions SET revoked=1 WHERE sid=?", (sid,))

    def revoke_user(self, user, ttl):
        return self._conn().execute("UPDATE sessions SET revoked=1 WHERE user=? AND revoked=0", (user,)).rowcount

    def live_count(self, now, timeout):
        return self._conn().execute(
            "SELECT COUNT(*) FROM sessions WHERE revoked=0 AND last_seen>=?", (now - timeout,)).fetchone()[0]

    def hit(self, key, window, now, amount=1):
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT count, expires FROM counters WHERE key=?", (key,)).fetchone()
            if row is None or row[1] < now:
                count = max(0, amount)
                if count:
                    db.execute("INSERT OR REPLACE INTO counters(key, count, expires) VALUES (?,?,?)",
                               (key, count, now + window))
            else:
                count = max(0, row[0] + amount)
                db.execute("UPDATE counters SET count=? WHERE key=?", (count, key))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return count

    def count(self, key, now) -> tuple[int, float]:
        row = self._conn().execute("SELECT count, expires FROM counters WHERE key=?", (key,)).fetchone()
        if row is None or row[1] < now:
            return 0, 0.0
        return row[0], row[1] - now

    def reset(self, key):
        self._conn().execute("DELETE FROM counters WHERE key=?", (key,))

    def begin(self, key, entry, ttl, now):
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM inflight WHERE key=? AND started < ?", (key, now - ttl))
            db.execute("INSERT OR REPLACE INTO inflight(key, entry, started) VALUES (?,?,?)", (key, entry, now))
            count = db.execute("SELECT COUNT(*) FROM inflight WHERE key=?", (key,)).fetchone()[0]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return count

    def end(self, key, entry):
        self._conn().execute("DELETE FROM inflight WHERE key=? AND entry=?", (key, entry))

    def remember(self, key, value, ttl):
        now = time.time()
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT value, expires FROM kv WHERE key=?", (key,)).fetchone()
            if row is not None and row[1] >= now:
                db.execute("COMMIT")
                return row[0]
            db.execute("INSERT OR REPLACE INTO kv(key, value, expires) VALUES (?,?,?)", (key, value, now + ttl))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return None

    def forget(self, key):
        self._conn().execute("DELETE FROM kv WHERE key=?", (key,))

    def swap(self, key, expected, value, ttl):
        now = time.time()
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT value, expires FROM kv WHERE key=?", (key,)).fetchone()
            done = row is not None and row[1] >= now and row[0] == expected
            if done and value is None:
                db.execute("DELETE FROM kv WHERE key=?", (key,))
            elif done:
                db.execute("UPDATE kv SET value=?, expires=? WHERE key=?", (value, now + ttl, key))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return done

    def close(self):
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class RedisSessionStore(SessionStore):
    """Sessions as Redis hashes with a TTL; shared by every replica."""

    def __init__(self, url: str):
        import redis
        self.r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                      health_check_interval=30)
        self.prefix = "hpcgw:"

    def _k(self, kind, key):
        return f"{self.prefix}{kind}:{key}"

    def create(self, sid, user, now, ttl):
        k = self._k("s", sid)
        # The user's session ids by creation time, for revoke_user; ids older than the longest
        # a session may live are dropped here, so a user who logs in all day keeps a bounded set.
        mine = self._k("u", user)
        with self.r.pipeline() as p:
            p.hset(k, mapping={"user": user, "created": now, "last_seen": now, "revoked": 0})
            p.expire(k, int(ttl) + 1)
            p.zadd(mine, {sid: now})
            p.zremrangebyscore(mine, "-inf", now - ttl - 1)
            p.expire(mine, int(ttl) + 1)
            p.execute()

    def get(self, sid):
        h = self.r.hgetall(self._k("s", sid))
        if not h:
            return None
        h = {k.decode(): v.decode() for k, v in h.items()}
        return Session(sid, h["user"], float(h["created"]), float(h["last_seen"]), h.get("revoked") == "1")

    def touch(self, sid, now, ttl):
        k = self._k("s", sid)
        with self.r.pipeline() as p:
            p.hset(k, "last_seen", now)
            p.expire(k, int(ttl) + 1)
            p.execute()

    def revoke(self, sid, ttl):
        k = self._k("s", sid)
        with self.r.pipeline() as p:
            p.hset(k, "revoked", 1)
            p.expire(k, int(ttl) + 1)
            p.execute()

    def revoke_user(self, user, ttl):
        mine = self._k("u", user)
        ended = 0
        for sid in self.r.zrange(mine, 0, -1):
            k = self._k("s", sid.decode())
            # Only a session that still exists (HSET would create an empty one).
            if self.r.eval(_REVOKE_IF_LIVE, 1, k, int(ttl) + 1):
                ended += 1
        return ended

    def live_count(self, now, timeout):
        # One pipelined round trip per 500 sessions (one per session took seconds at 10^5).
        n, batch = 0, []

        def count(keys):
            pipe = self.r.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, "last_seen", "revoked")
            return sum(1 for h in pipe.execute()
                       if h[0] is not None and float(h[0]) >= now - timeout and h[1] != b"1")

        for key in self.r.scan_iter(match=self._k("s", "*"), count=500):
            batch.append(key)
            if len(batch) == 500:
                n, batch = n + count(batch), []
        return n + (count(batch) if batch else 0)

    def hit(self, key, window, now, amount=1):
        k = self._k("c", key)
        if amount < 0:
            # Only take back from a live counter (an expired one is gone: nothing to undo).
            count = self.r.eval(_TAKE_BACK, 1, k, -amount)
            return int(count)
        with self.r.pipeline() as p:
            p.incrby(k, amount)
            p.expire(k, int(window), nx=True)
            count, _ = p.execute()
        return int(count)

    def count(self, key, now):
        k = self._k("c", key)
        with self.r.pipeline() as p:
            p.get(k)
            p.ttl(k)
            value, ttl = p.execute()
        return (int(value), float(max(ttl, 0))) if value is not None else (0, 0.0)

    def reset(self, key):
        self.r.delete(self._k("c", key))

    def begin(self, key, entry, ttl, now):
        # A sorted set scored by start time: entries older than ttl are dropped as they expire.
        k = self._k("f", key)
        with self.r.pipeline() as p:              # MULTI/EXEC: one step for every replica
            p.zremrangebyscore(k, "-inf", now - ttl)
            p.zadd(k, {entry: now})
            p.zcard(k)
            p.expire(k, int(ttl) + 1)
            _, _, count, _ = p.execute()
        return int(count)

    def end(self, key, entry):
        self.r.zrem(self._k("f", key), entry)

    def remember(self, key, value, ttl):
        k = self._k("kv", key)
        while True:
            if self.r.set(k, value, nx=True, ex=int(ttl)):
                return None
            earlier = self.r.get(k)
            if earlier is not None:
                return earlier.decode()
            # The key expired (or was deleted) between SET NX and GET: try to store again,
            # rather than tell the caller it stored a value it did not.

    def forget(self, key):
        self.r.delete(self._k("kv", key))

    # Compare-and-set in one server-side step, so two replicas can never both win.
    _SWAP = """
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        if ARGV[2] == '' then redis.call('DEL', KEYS[1])
        else redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3])) end
        return 1
    """

    def swap(self, key, expected, value, ttl):
        script = getattr(self, "_swap_script", None)
        if script is None:
            script = self._swap_script = self.r.register_script(self._SWAP)
        return bool(script(keys=[self._k("kv", key)], args=[expected, value or "", int(ttl)]))

    def close(self):
        self.r.close()


def _when_unlocked(step, seconds: float = 10.0):
    """``step()``, tried again while SQLite says the database is locked (up to ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02 + secrets.randbelow(50) / 1000)


def _private_file(path: str) -> None:
    """The database (session ids, which with the secret make tokens) readable by this account
    only. SQLite creates it 0644 (umask permitting), and its -wal and -shm files as the
    database is: create it 0600 first; tighten one an earlier version left open."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, path + "-wal", path + "-shm"):
        try:
            mode = os.stat(name).st_mode & 0o777
            if mode & 0o077:
                os.chmod(name, mode & 0o700)
                log.warning("session store %s was readable by others (%o): now %o", name, mode, mode & 0o700)
        except FileNotFoundError:
            pass
        except PermissionError:           # another account's file (a shared group store)
            log.warning("session store %s is readable by others and not this account's to change", name)


def shown_store(url: str) -> str:
    """``url`` fit for a log line: only its scheme (a Redis URL may hold a password)."""
    scheme = urlparse(url).scheme
    return f"{scheme}:" if scheme else "(no scheme)"


def open_store(url: str) -> SessionStore:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not path or path == "/":
            raise ConfigError("session_store sqlite:// needs a file path, e.g. sqlite:////var/lib/hpc-gateway/sessions.sqlite")
        return SqliteSessionStore(path)
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisSessionStore(url)
    raise ConfigError(f"unsupported session_store {shown_store(url)}: use sqlite:///path or redis://host:port/db")


def load_or_create_secret(path: str) -> bytes:
    """The signing secret shared by all replicas; created 0600 on first start.

    Workers starting together may all find no file: each writes its candidate to a private
    temporary file and hard-links it to ``path``, which succeeds for exactly one of them and
    never shows a half-written secret; the others read the winner's. (Where the file system
    has no hard links, O_EXCL creation, and a reader that finds the file still empty waits
    for its writer a moment.)"""
    for _ in range(50):
        try:
            with open(path, "rb") as fh:
                secret = fh.read().strip()
        except FileNotFoundError:
            pass
        else:
            if len(secret) >= 32:
                return secret
            if secret or time.time() - os.stat(path).st_mtime > 2:
                raise ConfigError(f"secret_file {path} holds fewer than 32 bytes")
            time.sleep(0.05)             # just created by another worker, not yet written
            continue
        created = _create_secret(path)
        if created is not None:
            return created
    raise ConfigError(f"cannot create or read secret_file {path}")


def _create_secret(path: str) -> bytes | None:
    """Write a new secret to ``path`` unless one appeared meanwhile (then None)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    secret = secrets.token_urlsafe(48).encode()
    fd, tmp = tempfile.mkstemp(prefix=".secret.", dir=folder)     # 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
            return secret
        except FileExistsError:
            return None
        except OSError as exc:           # no hard links here (vfat, CIFS, some FUSE mounts)
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret + b"\n")
        return secret
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


# Redis: mark a session revoked if it exists and is not yet; 1 if it was live.
_REVOKE_IF_LIVE = """
local r = redis.call('HGET', KEYS[1], 'revoked')
if not r or r == '1' then return 0 end
redis.call('HSET', KEYS[1], 'revoked', 1)
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
# Redis: decrement a counter that exists, never below 0, keeping its expiry (atomic).
_TAKE_BACK = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local n = math.max(0, tonumber(v) - tonumber(ARGV[1]))
redis.call('SET', KEYS[1], n, 'KEEPTTL')
return n
"""


class TokenManager:
    """Issues, checks, slides and revokes session tokens."""

    SALT = "hpc-gateway-session"

    def __init__(self, secret: bytes, store: SessionStore, timeout_minutes: float,
                 max_age_hours: float = 24.0, stamp: Callable[[str], str | None] | None = None):
        self.serializer = URLSafeTimedSerializer(secret, salt=self.SALT)
        self.store = store
        # The authenticator's credential stamp (Authenticator.stamp): a token carries the one
        # of its login and is refused once the user's stamp differs (removed, new password).
        self.stamp = stamp or (lambda user: None)
        self.timeout = float(timeout_minutes) * 60.0
        self.max_age = float(max_age_hours) * 3600.0
        # Write last-activity at most this often per session: the store stays off the hot path
        # while the timeout still slides with a precision far below the timeout itself.
        self.touch_interval = min(5.0, self.timeout / 10.0)
        self._verified: dict[str, tuple[dict, int]] = {}

    def issue(self, user: str, stamp: str | None = None) -> str:
        """A new session's token. ``stamp``: the credential stamp of the check that let the user
        in (else the authenticator's current one)."""
        sid = secrets.token_urlsafe(24)
        self.store.create(sid, user, time.time(), self.max_age)
        data = {"s": sid, "u": user}
        if stamp is None:
            stamp = self.stamp(user)
        if stamp is not None:
            data["c"] = stamp
        return self.serializer.dumps(data)

    # Tokens whose signature this process has checked (a bounded table, emptied when full).
    VERIFIED_BOUND = 4096

    def _load(self, token: str) -> dict:
        # The same string under the same secret verifies the same way every time: its HMAC is
        # checked once per process (itsdangerous was ~7 % of a job detail's time under load);
        # its age, on every use, as itsdangerous counts it (whole seconds).
        hit = self._verified.get(token)
        if hit is not None:
            data, signed_at = hit
            age = int(time.time()) - signed_at
            if age > self.max_age or age < 0:
                raise Unauthorized("Session expired: log in again with POST /login")
            return dict(data)
        try:
            data, signed = self.serializer.loads(token, max_age=self.max_age, return_timestamp=True)
        except SignatureExpired:
            raise Unauthorized("Session expired: log in again with POST /login")
        except BadSignature:
            raise Unauthorized("Invalid token: log in again with POST /login")
        if not isinstance(data, dict) or not isinstance(data.get("s"), str) or not isinstance(data.get("u"), str):
            raise Unauthorized("Invalid token: log in again with POST /login")
        if len(self._verified) >= self.VERIFIED_BOUND:
            self._verified.clear()
        self._verified[token] = (dict(data), int(signed.timestamp()))
        return data

    def check(self, token: str) -> Session:
        data = self._load(token)
        stamp = self.stamp(data["u"])
        # A token without a stamp (from a backend that gives none, PAM) ends too once the
        # backend says the user is unknown (""): switched to a users file that does not list
        # them, it must not outlive the switch. (One the backend knows keeps working: a
        # backend may give no stamp for a while, when it cannot tell.)
        if stamp is not None and ("c" in data or stamp == "") and data.get("c") != stamp:
            raise Unauthorized("Session ended: the account was removed or its password changed; "
                               "log in again with POST /login")
        session = self.store.get(data["s"])
        if session is None or session.user != data["u"]:
            raise Unauthorized("Session expired or unknown: log in again with POST /login")
        if session.revoked:
            raise Unauthorized("Session ended by logout: log in again with POST /login")
        now = time.time()
        if now - session.last_seen > self.timeout:
            raise Unauthorized("Session expired after inactivity: log in again with POST /login")
        if now - session.last_seen >= self.touch_interval:
            self.store.touch(session.sid, now, self.max_age)
        return session

    def revoke(self, token: str) -> str:
        """End the token's session; the user it was."""
        session = self.check(token)
        self.store.revoke(session.sid, self.max_age)
        return session.user
