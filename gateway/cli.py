"""``hpc-gateway``: manage the users file and check a configuration.

    hpc-gateway users add NAME [--admin]     (password from a prompt, or stdin with --password-stdin)
    hpc-gateway users passwd NAME
    hpc-gateway users remove NAME
    hpc-gateway users list
    hpc-gateway check-config
"""
from __future__ import annotations

import argparse
import getpass
import sys

from .auth.users_file import UsersFile
from .config import load_config
from .errors import GatewayError


def _password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("the passwords differ")
    return first


def _end_sessions(cfg: dict, name: str) -> str:
    """A changed password or a removed user ends the user's sessions on every replica (tokens
    stay valid for token_max_age_hours otherwise)."""
    from .sessions import open_store, shown_store
    try:
        store = open_store(cfg["session_store"])
        try:
            ended = store.revoke_user(name, float(cfg["token_max_age_hours"]) * 3600.0)
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - the users file is changed; say what is left to do
        print(f"hpc-gateway: WARNING: could not end {name}'s sessions in the {shown_store(cfg['session_store'])} "
              f"session store: {exc}; "
              f"they stay valid until they expire (token_max_age_hours) or log out", file=sys.stderr)
        return "sessions NOT ended"
    return f"ended {ended} session{'s' if ended != 1 else ''}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hpc-gateway", description="HPC Gateway administration")
    parser.add_argument("--config", help="configuration file (default: $GATEWAY_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)
    users = sub.add_parser("users", help="manage the users file").add_subparsers(dest="action", required=True)
    for action in ("add", "passwd"):
        p = users.add_parser(action)
        p.add_argument("name")
        p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        if action == "add":
            p.add_argument("--admin", action="store_true", help="make the user an administrator")
    users.add_parser("remove").add_argument("name")
    users.add_parser("list")
    check = sub.add_parser("check-config", help="validate the configuration and load the scheduler plugin")
    check.add_argument("--strict", action="store_true", help="fail (exit 1) on unknown keys too")
    args = parser.parse_args(argv)
    try:
        unknown: list[str] = []
        cfg = load_config(args.config, unknown=unknown)
        if args.command == "check-config":
            from .plugins import load_scheduler
            sched = load_scheduler(cfg["scheduler"]["backend"], cfg["scheduler"]["options"], cfg["work_dir"])
            sched.close()
            if unknown:
                # Ignored (a file may carry another release's keys), but a typo leaves a
                # default in force: say so; --strict fails the check.
                print(f"hpc-gateway: WARNING: unknown keys, ignored: {', '.join(unknown)}", file=sys.stderr)
                if args.strict:
                    return 1
            print(f"configuration OK; scheduler backend {sched.name}")
            return 0
        store = UsersFile(cfg["auth"]["users_file"])
        if args.action == "list":
            for name, entry in sorted(store.users().items()):
                print(f"{name}{' (admin)' if entry.get('admin') else ''}")
        elif args.action == "add":
            if args.name in store.users():
                raise SystemExit(f"user {args.name} exists; use 'passwd' to change the password")
            store.set_password(args.name, _password(args), admin=args.admin)
            print(f"added {args.name} to {store.path}")
        elif args.action == "passwd":
            if args.name not in store.users():
                raise SystemExit(f"no such user: {args.name}")
            store.set_password(args.name, _password(args))
            print(f"password of {args.name} changed; {_end_sessions(cfg, args.name)}")
        elif args.action == "remove":
            if not store.remove(args.name):
                raise SystemExit(f"no such user: {args.name}")
            print(f"removed {args.name}; {_end_sessions(cfg, args.name)}")
    except (GatewayError, ValueError) as exc:
        print(f"hpc-gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
