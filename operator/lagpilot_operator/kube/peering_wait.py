"""`lagpilot peering-wait`: a fresh operator replica waits for the replicas starting with it to announce
themselves in the kopf peering before it runs (the chart's `lagpilot.operatorScript`).

kopf learns of a peer only from the peer's keep-alive in the peering object. Replicas that start
together (an install, a node coming back) would each act if their first look at the peering does not
show the others yet. So a fresh replica first writes its own entry (`kopf freeze`), then waits here
until the peering shows as many live entries as the Deployment has replicas, or until its timeout: a
replica whose peer cannot start (unschedulable, crash-looping) still runs, only later. A fixed sleep did
the same while the replicas' start-ups were less than the sleep apart; on a busy node they were more.

kopf's announcement (`kopf freeze`) silently does nothing while the peering object does not exist yet
(kopf logs "Keep-alive ... not found" at debug level and exits 0), and Helm creates custom objects such
as the KopfPeering after the Deployment. A replica whose container started first then announced
nothing, every replica waited out the whole timeout, and they started together: the race this wait is
for (a standby acted for 66 ms beside the leader in one CI run). So the chart's script first runs
`lagpilot peering-wait --exists` (until every peering object exists), then `kopf freeze`, then the wait.

The decision (`live_peers`, `wait_for_peers`, `wait_until_present`) is pure; `main` reads the peering
objects.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

KOPF_GROUP, KOPF_VERSION = "kopf.dev", "v1"
_T = TypeVar("_T")


def live_peers(status: Mapping[str, Any] | None, now: datetime) -> set[str]:
    """The identities of a peering's status whose keep-alive has not expired (kopf's own rule:
    `lastseen + lifetime` is still ahead). Entries kopf cannot have written are not peers."""
    alive = set()
    for identity, peer in (status or {}).items():
        if not isinstance(peer, Mapping):
            continue
        try:
            seen = datetime.fromisoformat(str(peer["lastseen"]))
            lifetime = timedelta(seconds=int(peer.get("lifetime", 60)))
        except (KeyError, TypeError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=UTC)
        if seen + lifetime > now:
            alive.add(identity)
    return alive


def wait_for_peers(read_statuses: Callable[[], Sequence[Mapping[str, Any] | None]], expect: int, timeout: float,
                   *, interval: float = 0.5, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep,
                   now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> int:
    """Read the peering statuses (one per peering: one cluster-wide, or one per watched namespace) until
    each shows `expect` live peers or `timeout` s have passed; return the fewest live peers seen in the
    last read (so the caller can say how many it started with)."""
    def fewest(statuses: Sequence[Mapping[str, Any] | None]) -> int:
        return min((len(live_peers(status, now())) for status in statuses), default=0)

    return _read_until(read_statuses, fewest, lambda seen: seen >= expect, timeout, interval, clock, sleep)


def wait_until_present(read_statuses: Callable[[], Sequence[Mapping[str, Any] | None]], timeout: float,
                       *, interval: float = 0.5, clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> bool:
    """Read the peerings until none is missing (None) or `timeout` s have passed; whether all exist."""
    def present(statuses: Sequence[Mapping[str, Any] | None]) -> bool:
        return all(status is not None for status in statuses)

    return _read_until(read_statuses, present, bool, timeout, interval, clock, sleep)


def _read_until(read_statuses: Callable[[], Sequence[Mapping[str, Any] | None]],
                measure: Callable[[Sequence[Mapping[str, Any] | None]], _T], enough: Callable[[_T], bool],
                timeout: float, interval: float, clock: Callable[[], float],
                sleep: Callable[[float], None]) -> _T:
    """Read the peerings every `interval` s until what `measure` makes of a read is `enough` or `timeout` s
    have passed; that of the last read."""
    deadline = clock() + timeout
    while True:
        found = measure(read_statuses())
        if enough(found) or clock() >= deadline:
            return found
        sleep(min(interval, max(0.0, deadline - clock())))


def _reader(peering: str, namespaces: Sequence[str]) -> Callable[[], list[Mapping[str, Any] | None]]:
    # Not kube_io.load_configuration: kube_io imports the Kafka client and the models, seconds of a busy
    # node's CPU before the replica may start; this command needs the API client only.
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.CustomObjectsApi()

    def status_of(get: Callable[[], Any]) -> Mapping[str, Any] | None:
        """The peering's status ({} while it has none); None when the object does not exist (yet)."""
        try:
            found = get()
        except ApiException as exc:
            if exc.status == 404:  # no peering object (yet): nobody can have announced
                return None
            raise
        status = found.get("status") if isinstance(found, Mapping) else None
        return status if isinstance(status, Mapping) else {}

    def read() -> list[Mapping[str, Any] | None]:
        if not namespaces:
            return [status_of(lambda: api.get_cluster_custom_object(
                KOPF_GROUP, KOPF_VERSION, "clusterkopfpeerings", peering))]
        return [status_of(lambda ns=ns: api.get_namespaced_custom_object(  # type: ignore[misc]
            KOPF_GROUP, KOPF_VERSION, ns, "kopfpeerings", peering)) for ns in namespaces]

    return read


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="lagpilot peering-wait", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peering", required=True, help="the (Cluster)KopfPeering's name")
    wanted = parser.add_mutually_exclusive_group(required=True)
    wanted.add_argument("--expect", type=int, help="live peers to wait for (this replica's included)")
    wanted.add_argument("--exists", action="store_true",
                        help="wait only until the peering object(s) exist, so an announcement is not lost")
    parser.add_argument("--timeout", type=float, required=True, help="seconds to wait at most")
    parser.add_argument("--interval", type=float, default=0.5)
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="the ClusterKopfPeering")
    scope.add_argument("--namespace", "-n", action="append", help="the KopfPeering in this namespace (repeatable)")
    args = parser.parse_args(argv)
    namespaces: list[str] = [] if args.all_namespaces else list(args.namespace)
    started = time.monotonic()
    if args.exists:
        present = wait_until_present(_reader(args.peering, namespaces), args.timeout, interval=args.interval)
        print(f"peering {args.peering}: {'present' if present else 'still missing'} after "
              f"{time.monotonic() - started:.1f} s", file=sys.stderr)
        return 0
    seen = wait_for_peers(_reader(args.peering, namespaces), args.expect, args.timeout, interval=args.interval)
    waited = time.monotonic() - started
    said = f"peering {args.peering}: {seen} of {args.expect} replicas announced after {waited:.1f} s"
    if seen < args.expect:
        said += " (the timeout); starting without the others"
    print(said, file=sys.stderr)
    return 0
