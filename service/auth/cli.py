"""`python -m service auth ...`: create, list and revoke credentials. Secrets are printed once.

The server re-reads the credentials file within a second of a change: no restart needed.
"""
from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
import time
from pathlib import Path

from ..config import ENV_PREFIX, Settings
from ..fsutil import describe_os_error
from . import credentials
from .credentials import CredentialsError, encoded_api_key, make_credential, new_secret


def _path(args: argparse.Namespace) -> Path:
    """The file the server reads: --auth-file, else ORTEMBED_AUTH_FILE, else <data dir>/credentials.json."""
    explicit = args.auth_file or os.environ.get(ENV_PREFIX + "AUTH_FILE", "").strip()
    if explicit:
        return Path(explicit)
    data_dir = args.data_dir or Path(os.environ.get(ENV_PREFIX + "DATA_DIR", "").strip() or Settings.data_dir)
    return Path(data_dir) / Settings.auth_file_name


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(6)}"


def create_key(args: argparse.Namespace) -> None:
    key_id, secret = _new_id("k_"), new_secret()
    credentials.add(_path(args), make_credential("api_key", key_id, args.name, secret))
    encoded = encoded_api_key(key_id, secret)
    print(f"API key [{key_id}] for [{args.name}] created. The key is shown only now:")
    print(f"  id:      {key_id}")
    print(f"  api_key: {secret}")
    print(f"  encoded: {encoded}")
    print("Send it as `Authorization: ApiKey <encoded>` (Elasticsearch clients: api_key=\"<encoded>\")")
    print("or as `Authorization: Bearer <encoded>` (OpenAI SDK: api_key=\"<encoded>\").")


def create_token(args: argparse.Namespace) -> None:
    token_id, secret = _new_id("t_"), new_secret()
    credentials.add(_path(args), make_credential("token", token_id, args.name, secret))
    print(f"Bearer token [{token_id}] for [{args.name}] created. The token is shown only now:")
    print(f"  token: {secret}")
    print("Send it as `Authorization: Bearer <token>`.")


def create_user(args: argparse.Namespace) -> None:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.username}: ")
    else:
        password = new_secret()
        print(f"generated password (shown only now): {password}")
    if len(password) < 8:
        raise CredentialsError("a password needs at least 8 characters")
    if ":" in args.username:
        raise CredentialsError("a user name cannot contain ':'")
    credentials.add(_path(args), make_credential("user", args.username, args.username, password))
    print(f"user [{args.username}] created. Send `Authorization: Basic base64(user:password)`.")


def list_credentials(args: argparse.Namespace) -> None:
    path = _path(args)
    found = credentials.read(path)
    if not found:
        if path.exists():
            print(f"{path} holds no credential: a server using it refuses every request")
        else:
            print(f"no credentials file at {path}: a server with --auth auto is open")
        return
    for c in found:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.created))
        print(f"{c.kind:8} {c.id:20} {c.name:24} created {created}")


def revoke(args: argparse.Namespace) -> None:
    gone = credentials.remove(_path(args), args.id)
    print(f"revoked {gone.kind} [{gone.id}] of [{gone.name}]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service auth", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"where the server keeps its data [env {ENV_PREFIX}DATA_DIR; default {Settings.data_dir}]")
    parser.add_argument("--auth-file", type=Path, default=None,
                        help=f"the credentials file [env {ENV_PREFIX}AUTH_FILE; default <data dir>/credentials.json]")
    commands = parser.add_subparsers(dest="command", required=True)
    key = commands.add_parser("create-key", help="a new API key (ApiKey or Bearer)")
    key.add_argument("--name", required=True, help="who or what uses the key")
    key.set_defaults(run=create_key)
    token = commands.add_parser("create-token", help="a new Bearer token")
    token.add_argument("--name", required=True, help="who or what uses the token")
    token.set_defaults(run=create_token)
    user = commands.add_parser("create-user", help="a Basic user (password from a prompt, stdin, or generated)")
    user.add_argument("username")
    user.add_argument("--password-stdin", action="store_true", help="read the password from the first stdin line")
    user.set_defaults(run=create_user)
    commands.add_parser("list", help="every credential, without secrets").set_defaults(run=list_credentials)
    gone = commands.add_parser("revoke", help="delete a credential by id (or user name)")
    gone.add_argument("id")
    gone.set_defaults(run=revoke)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CredentialsError as exc:
        print(f"auth: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, read-only, permissions: nothing was changed
        print(f"auth: could not write {_path(args)}: {describe_os_error(exc)}; nothing was changed", file=sys.stderr)
        return 1
    return 0
