"""A redrive process the tests can SIGKILL: runs a redrive to completion, keeping its progress in a
JSON file the way the operator keeps it in status.redrive.

    python redrive_child.py --bootstrap B --group G --dlq T --request r-1 --status-file F
                            [--max-messages N] [--batch 10] [--hang-at-batch K]

With --hang-at-batch K it prints IN-TRANSACTION and blocks forever inside the K-th transaction
(records produced and flushed, DLQ offsets sent, commit not yet done): the test kills it there.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from lagpilot_operator.kafka.redrive import RedriveProgress, RedriveRequest, run_redrive_to_completion


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--dlq", required=True)
    parser.add_argument("--request", required=True)
    parser.add_argument("--status-file", type=Path, required=True)
    parser.add_argument("--max-messages", type=int, default=None)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--hang-at-batch", type=int, default=0)
    args = parser.parse_args()

    status_file: Path = args.status_file
    previous = json.loads(status_file.read_text()) if status_file.exists() else None
    batches = 0

    def record(progress: RedriveProgress) -> None:
        tmp = status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(progress.to_status()))
        tmp.rename(status_file)
        print(f"PROGRESS {progress.state.value} {progress.done}/{progress.total}", flush=True)

    def before_commit(candidate: RedriveProgress) -> None:
        nonlocal batches
        batches += 1
        if batches == args.hang_at_batch:
            print(f"IN-TRANSACTION {candidate.done}/{candidate.total}", flush=True)
            threading.Event().wait()  # hold the transaction open until SIGKILL

    final = run_redrive_to_completion(
        {"bootstrap.servers": args.bootstrap}, args.group, args.dlq,
        RedriveRequest(args.request, args.max_messages), previous,
        max_batch=args.batch, on_progress=record, before_commit=before_commit, deadline_seconds=120,
    )
    print(f"FINISHED {json.dumps(final.to_status())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
