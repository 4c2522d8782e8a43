"""`python -m gateway.keys new --id ci-bot --scopes audits:read,audits:write`: a new key, and
the keys file entry that admits it.

The key goes to stderr, once: it is stored nowhere. The entry (YAML, or JSON with `--json`)
goes to stdout, ready to append to the keys file.
"""

import argparse
import json
import sys

import yaml
from pydantic import ValidationError

from gateway.keys import Scope, file_entry, new_key


def _scopes(text: str) -> list[Scope]:
    try:
        return [Scope(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        choices = ", ".join(scope.value for scope in Scope)
        raise argparse.ArgumentTypeError(
            f"scopes are a comma-separated list of: {choices}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway.keys")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="create a key and print its keys file entry")
    new.add_argument("--id", required=True, help="the client's name (X-Client-ID, client_id)")
    new.add_argument("--scopes", required=True, type=_scopes, help="e.g. audits:read,llm")
    new.add_argument("--requests-per-minute", type=int, default=None)
    new.add_argument("--tokens-per-minute", type=int, default=None)
    new.add_argument("--json", action="store_true", help="print the entry as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    key = new_key()
    limits = {
        "requests_per_minute": args.requests_per_minute,
        "tokens_per_minute": args.tokens_per_minute,
    }
    try:
        entry = file_entry(args.id, key, args.scopes, limits)
    except ValidationError as exc:
        problems = "; ".join(f"{error['loc'][0]}: {error['msg']}" for error in exc.errors())
        print(f"error: {problems}", file=sys.stderr)
        return 2
    print(f"API key for {args.id} (shown once, store it now): {key}", file=sys.stderr)
    if args.json:
        print(json.dumps(entry))
    else:
        print(yaml.safe_dump([entry], sort_keys=False, default_flow_style=None), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
