# /// script
# requires-python = ">=3.11"
# dependencies = ["orjson>=3.10"]
# ///
"""Re-verify an exported audit trail offline, without the service or its database.

Input: NDJSON, one event per line as `GET /api/v1/audits/events` returns them (`seq`,
`record_id`, `op`, `at`, `request_id`, `client_id`, `state`, `hash`), in `seq` order,
e.g. all pages of that route, or `psql -c "\\copy (...) to ..."` of the same fields.
Every sealed event's hash is recomputed from the one before; the script prints the head it
reached, to compare with a head published earlier (`GET /api/v1/audits/head`).

    uv run audits-service/scripts/verify_export.py events.ndjson [--head HASH]

Exit status 0: the chain is intact (and reaches HASH, if given); 1: it is not.
"""

import argparse
import hashlib
import sys

import orjson

FIELDS = ("seq", "record_id", "op", "at", "request_id", "client_id", "state")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=argparse.FileType("rb"))
    parser.add_argument("--head", help="a published head hash the trail must contain")
    args = parser.parse_args()
    previous, last_seq, seen_head = bytes(32), 0, args.head is None
    for number, line in enumerate(args.export, start=1):
        event = orjson.loads(line)
        if event["hash"] is None:  # not sealed yet: nothing to check from here on
            break
        if event["seq"] <= last_seq:
            print(f"line {number}: seq {event['seq']} out of order", file=sys.stderr)
            return 1
        document = {field: event[field] for field in FIELDS}
        digest = hashlib.sha256(previous + orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
        if digest.hexdigest() != event["hash"]:
            print(f"line {number}: hash of seq {event['seq']} does not match", file=sys.stderr)
            return 1
        previous, last_seq = digest.digest(), event["seq"]
        seen_head = seen_head or event["hash"] == args.head
    if not seen_head:
        print(f"the trail does not contain the head {args.head}", file=sys.stderr)
        return 1
    print(f"intact: head seq {last_seq} hash {previous.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
