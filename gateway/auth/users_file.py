"""A users file: YAML with Argon2id password hashes, managed by ``hpc-gateway users``.

    users:
      alice: {hash: "$argon2id$v=19$...", admin: false}

Hashing is argon2-cffi's PasswordHasher (memory-hard; never a plain or fast hash). The file
is re-read when it changes, so ``hpc-gateway users add`` takes effect without a restart.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import tempfile
import threading

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..errors import ConfigError
from . import Authenticator, Identity

USERNAME_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\Z")
log = logging.getLogger(__name__)
_hasher = PasswordHasher()
# A real hash to verify against when the user does not exist, so that an unknown name costs
# as much time as a wrong password (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def valid_username(name: str) -> bool:
    return bool(USERNAME_RE.match(name or ""))


class UsersFile:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._file_id = None
        self._users: dict = {}
        self._good = None                    # the file_id of the last version that parsed
        self._error: Exception | None = None
        self._listed = False                 # the file has a users: key (it may list nobody)
        self._stamps: dict[str, str] = {}

    def _load(self) -> dict:
        """The users, re-read when the file changes. A file that cannot be read or parsed (a
        hand edit left half done) is reported once and the last good version kept; with none
        (the first read), it is a ConfigError."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._listed = False
            return {}
        file_id = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if file_id != self._file_id:
                try:
                    with open(self.path, encoding="utf-8") as fh:
                        data = yaml.safe_load(fh)
                    data = {} if data is None else data
                    if not isinstance(data, dict) or not isinstance(data.get("users") or {}, dict):
                        raise ConfigError(f"{self.path}: expected a mapping 'users: {{name: {{hash, admin}}}}'")
                except (OSError, UnicodeDecodeError, yaml.YAMLError, ConfigError) as exc:
                    self._file_id = file_id            # not parsed again until it changes
                    why = str(exc).replace("\n", " ")[:300]
                    if self._good is None:
                        self._error = exc
                        log.error("%s cannot be read (%s): no login works until it is mended", self.path, why)
                    else:
                        log.error("%s cannot be read (%s): still using the version read before", self.path, why)
                else:
                    self._users, self._file_id, self._error = data.get("users") or {}, file_id, None
                    self._good = file_id
                    self._listed = "users" in data
            if self._error is not None:
                raise ConfigError("the gateway's users file cannot be read: its log says why")
            return self._users

    def users(self) -> dict:
        return dict(self._load())

    def entry(self, name: str) -> dict | None:
        return self._load().get(name)

    def _save(self, users: dict) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".users.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                yaml.safe_dump({"users": users}, fh, sort_keys=True)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def set_password(self, name: str, password: str, admin: bool | None = None) -> None:
        if not valid_username(name):
            raise ValueError(f"invalid user name {name!r}")
        if len(password) < 8:
            raise ValueError("a password needs at least 8 characters")
        users = self.users()
        entry = dict(users.get(name) or {})
        entry["hash"] = _hasher.hash(password)
        if admin is not None:
            entry["admin"] = bool(admin)
        entry.setdefault("admin", False)
        users[name] = entry
        self._save(users)

    def remove(self, name: str) -> bool:
        users = self.users()
        if name not in users:
            return False
        del users[name]
        self._save(users)
        return True

    def stamp(self, name: str) -> str | None:
        """A digest of the user's password hash ("" for a user the file no longer lists).
        None while the file is missing or empty (an editor rewriting it in place must not end
        every session) or cannot be read at all."""
        try:
            users = self._load()
        except ConfigError:
            return None
        if not self._listed:
            return None
        return self._stamp_of(users.get(name))

    def _stamp_of(self, entry) -> str:
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str) or not entry["hash"]:
            return ""
        stamp = self._stamps.get(entry["hash"])
        if stamp is None:
            if len(self._stamps) > 10000:
                self._stamps.clear()
            stamp = self._stamps[entry["hash"]] = hashlib.sha256(entry["hash"].encode()).hexdigest()[:16]
        return stamp

    def verify(self, name: str, password: str) -> Identity | None:
        entry = self._load().get(name) if valid_username(name) else None
        stored = (entry or {}).get("hash") or _DUMMY_HASH
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if entry is None:
            return None
        # The stamp of the hash just verified, not of the file's entry by the time the token is
        # made: a password changed during this check must not give the old one a new session.
        return Identity(name=name, admin=bool(entry.get("admin", False)), stamp=self._stamp_of(entry))


class UsersFileAuthenticator(Authenticator):
    def __init__(self, auth_config: dict):
        self.users = UsersFile(auth_config["users_file"])
        # Read at start: a file that does not parse stops the start with the reason, and a
        # replica that has read it once keeps that version through a later bad edit.
        try:
            self.users._load()
        except ConfigError:
            raise ConfigError(f"{self.users.path} cannot be read: {self.users._error}") from None

    def authenticate(self, username, password):
        return self.users.verify(username, password)

    def stamp(self, username):
        return self.users.stamp(username)


def make_authenticator(auth_config: dict) -> Authenticator:
    return UsersFileAuthenticator(auth_config)
