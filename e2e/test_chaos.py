"""Real faults on the real node, under load: each scenario asserts that nothing is lost (the ledger accounts
for every id), that duplicates stay within what the worker runtime guarantees, that the group kept
processing while the fault was in force (not only after), and prints the operator's decisions during it.

* a worker Pod deleted with its grace period, then one deleted with none (`--grace-period=0 --force`):
  SIGTERM -> final commit -> exit, measured from the worker's own log lines;
* a rolling update of the worker Deployment (a template change through the KafkaConsumerGroup) during a
  burst;
* 200 ms of latency on every packet from the worker Pods to the broker (e2e/faults.py: an NFQUEUE delay in
  each Pod's netns; this kernel has no netem);
* one worker Pod cut off from the broker for 30 s (iptables DROP in its netns), with a 10 s session
  timeout so the group evicts it and its partitions fail over to the others.

A SIGKILL of a worker's container through the runtime and the operator killed mid-scale are in
test_faults.py. Every fault rule lives in a Pod's netns and is removed after the window; the host's root
netns never holds one (asserted), `ip_forward` stays 0.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from e2e import chaos, faults
from e2e.harness import Group, Scenario, duplicate_report, end_load_after, finish_load, phase, read_entries
from e2e.loadgen import constant, steps
from support import wait_for

PARTITIONS = 6
COST_MS = 20
# The worker's window of records fetched but not committed: what a worker that vanishes without a final
# commit can have delivered again. Set explicitly so the bound below is the configured one.
WINDOW = 200
GRACE_SECONDS = 20          # the template's terminationGracePeriodSeconds (harness default)
SHUTDOWN_TIMEOUT_SECONDS = 10
# Each load is sized to outlast its fault; it ends this long after the fault is over, once the group has
# been seen processing without it.
AFTER_FAULT_SECONDS = 10


def _group(scenario: Scenario, topic: str, *, replicas_min: int, replicas_max: int,
           extra_env: dict[str, str] | None = None) -> Group:
    env = {"LAGPILOT_MAX_UNCOMMITTED": str(WINDOW), "LAGPILOT_LOG_LEVEL": "info", **(extra_env or {})}
    group = scenario.create_group(topic=topic, cost_ms=COST_MS, worker_extra_env=env, replicas_min=replicas_min,
                                  replicas_max=replicas_max, pool_min=1, pool_initial=2, pool_max=4, poll_seconds=2,
                                  target_drain_seconds=20)
    scenario.wait_ready(group, replicas_min, timeout=180)
    return group


def _decisions(group: Group, since: float, until: float, origin: float) -> str:
    lines = chaos.decision_timeline(group.watch.status_history(), since, until, origin)
    return "\n".join(f"    {line}" for line in lines) or "    (no decision changed)"


def _assert_host_clean() -> None:
    assert faults.host_fault_rules() == [], "a fault rule reached the host's root netns"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"


def _account(scenario: Scenario, group: Group, ledger: Any, result: Any, start: float) -> tuple[Any, list[Any]]:
    accounting = ledger.wait_for(result.ids, 240)
    assert accounting.complete, f"lost messages: {accounting.summary()}; {group.watch.describe(start)}"
    entries = read_entries(scenario.bootstrap, group.processed_topic, ledger.records)
    return accounting, entries


def _pods_gone(scenario: Scenario, pod: str, timeout: float) -> float:
    """When the Pod object is gone (at once if it already was: kubectl answers a missing Pod with success)."""
    waited = scenario.kubectl("wait", "--for=delete", f"pod/{pod}", "-n", scenario.namespace,
                              f"--timeout={int(timeout)}s", check=False, timeout=timeout + 30)
    assert waited.returncode == 0, f"Pod {pod} still there {timeout:.0f} s after its deletion: {waited.stderr.strip()}"
    return time.time()


# --- Pod deletion, with and without a grace period -----------------------------------------------------------


def test_worker_pods_deleted_with_and_without_grace_lose_nothing(scenario: Scenario, tmp_path: Path) -> None:
    topic = scenario.make_topic("chaos-delete", PARTITIONS)
    logs = tmp_path / "worker-logs"
    runtime = faults.NodeRuntime(scenario.kubectl, _containerd(scenario))
    with contextlib.closing(_Recording(scenario, logs)) as recording, faults.TaskExits(runtime) as exits:
        group = _group(scenario, topic, replicas_min=2, replicas_max=3)
        ledger = scenario.ledger(group.processed_topic)
        start = time.time()
        load = scenario.load(topic, constant(120, 75))
        phase(10)

        measured: dict[str, dict[str, Any]] = {}
        for label, args in (("grace", []), ("no grace", ["--grace-period=0", "--force"])):
            pod = scenario.worker_pods(group)[0]
            container = runtime.pod(scenario.namespace, pod).container_id
            deleted = time.time()
            scenario.kubectl("delete", "pod", pod, "-n", scenario.namespace, "--wait=false", *args)
            exited = exits.wait_exit(container, GRACE_SECONDS + 30)
            gone = _pods_gone(scenario, pod, GRACE_SECONDS + 30)
            assert exited is not None, f"no exit of {pod}'s container within the grace period"
            # A replacement starts and joins; the next fault hits a group at full strength again.
            scenario.wait_ready(group, 2, timeout=120)
            phase(5)
            recording.flush()
            stops = chaos.shutdowns(chaos.worker_log(logs, scenario.namespace, pod))
            stop = stops[-1] if stops else None
            measured[label] = {
                "pod": pod, "exit_status": exited.exit_status,
                "delete_to_exit": round(exited.exited_at - deleted, 2),
                "delete_to_sigterm": None if stop is None else round(stop.stopping - deleted, 2),
                "sigterm_to_final_commit": None if stop is None or stop.seconds is None else round(stop.seconds, 2),
                "sigterm_to_exit": None if stop is None else round(exited.exited_at - stop.stopping, 2),
                "delete_to_pod_gone": round(gone - deleted, 2),
                "in_flight": None if stop is None else stop.in_flight,
                "abandoned": None if stop is None else stop.abandoned,
                "window": (deleted, max(gone, exited.exited_at))}

        result = end_load_after(load, AFTER_FAULT_SECONDS)
        accounting, entries = _account(scenario, group, ledger, result, start)
        _assert_host_clean()

    print(f"\ndelete: produced {result.produced}, duplicates {accounting.duplicates}; {duplicate_report(entries)}")
    for label, m in measured.items():
        since, until = m.pop("window")
        print(f"  {label}: {m}")
        print(f"  operator decisions while {m['pod']} went ({label}):")
        print(_decisions(group, since, until + 10, start))
        # The rest of the group kept going while the Pod shut down.
        others = chaos.processed_between(entries, since, max(until, since + 2), exclude=[m["pod"]])
        assert others > 0, f"no record processed by the other workers while the {label} deletion ran"

    charged = chaos.duplicates_by_first_worker(entries)
    print(f"  duplicates by the worker that ran them first: {charged}")
    graceful = measured["grace"]
    # Graceful: SIGTERM is handled, the records in hand finish, the final commit is made, the worker
    # leaves the group and exits 0, well within the shutdown timeout and the grace period.
    assert graceful["exit_status"] == 0, graceful
    assert graceful["sigterm_to_final_commit"] is not None, f"no 'stopped' line: {graceful}"
    assert graceful["sigterm_to_exit"] <= SHUTDOWN_TIMEOUT_SECONDS + 2, graceful
    # docs/worker.md: a graceful revoke or shutdown repeats only the records still running when its bound
    # ran out and those of a final commit the broker refused, all of which the worker reports. A stop
    # SIGKILLed before its final commit is a crash: what runs again is what its last stored commit did
    # not cover, which the docs do not bound by the window.
    for m in measured.values():
        if m["sigterm_to_final_commit"] is not None:
            reported = chaos.replays_reported(chaos.worker_log(logs, scenario.namespace, m["pod"]))
            assert charged.get(m["pod"], 0) <= reported, (m, reported, charged, accounting.summary(),
                                                           chaos.duplicate_runs(entries))


# --- a rolling update during a burst -------------------------------------------------------------------------


def test_rolling_update_during_a_burst_loses_nothing(scenario: Scenario, tmp_path: Path) -> None:
    _containerd(scenario)
    topic = scenario.make_topic("chaos-rollout", PARTITIONS)
    logs = tmp_path / "worker-logs"
    with contextlib.closing(_Recording(scenario, logs)) as recording:
        group = _group(scenario, topic, replicas_min=2, replicas_max=4)
        ledger = scenario.ledger(group.processed_topic)
        start = time.time()
        load = scenario.load(topic, steps([(10, 60), (40, 250), (20, 60)]))
        wait_for(lambda: group.watch.max_replicas(start) >= 3 or time.time() - start > 25, 40, "the burst to start")
        deployment = group.watch.deployment_name
        assert deployment is not None
        # Every Pod of the old template, also those a scale-up adds while the rollout starts.
        old_hash = _template_hashes(scenario, group)
        old_pods = set(scenario.worker_pods(group))

        # A change a user makes: new env in the group's template, rolled out to the Deployment's Pods.
        rollout_at = time.time()
        container = dict(group.spec.container)
        container["env"] = [*container["env"], {"name": "E2E_ROLLOUT", "value": "2"}]
        scenario.kubectl("patch", "kcg", group.name, "-n", scenario.namespace, "--type=json", "-p",
                         _json([{"op": "replace", "path": "/spec/template/spec/template/spec/containers/0",
                                 "value": container}]))
        wait_for(lambda: "E2E_ROLLOUT" in _pod_template_env(scenario, deployment), 60,
                 "the operator to carry the template change to the Deployment")
        scenario.kubectl("rollout", "status", f"deployment/{deployment}", "-n", scenario.namespace,
                         "--timeout=240s", timeout=300)
        # The rollout is over for the group once the old Pods have finished their graceful shutdown.
        old_pods |= {p.name.split("_", 1)[1].removesuffix(".log") for p in logs.glob(f"{scenario.namespace}_*.log")
                     if any(f"-{h}-" in p.name for h in old_hash)}
        for pod in old_pods:
            _pods_gone(scenario, pod, GRACE_SECONDS + 30)
        rolled_at = time.time()
        new_pods = set(scenario.worker_pods(group))
        assert new_pods and not old_pods & new_pods, f"old Pods still running after the rollout: {old_pods & new_pods}"

        result = finish_load(load)
        accounting, entries = _account(scenario, group, ledger, result, start)
        recording.flush()
        records = {pod: chaos.worker_log(logs, scenario.namespace, pod) for pod in old_pods}  # read once
        stops = {pod: chaos.shutdowns(records[pod]) for pod in old_pods}
        # What the worker runtime says about its commits and assignments: the cause, if duplicates exceed
        # what the stops gave up.
        commit_trouble = {pod: chaos.commit_trouble(records[pod]) for pod in sorted(old_pods)}
        _assert_host_clean()

        # Up to the last record processed: once the burst is drained there is nothing left to progress on.
        slices = chaos.progress_slices(entries, rollout_at, min(rolled_at, chaos.last_processed(entries)), 5)
        print(f"\nrollout: {len(old_pods)} Pods replaced in {rolled_at - rollout_at:.1f}s; produced {result.produced}, "
              f"duplicates {accounting.duplicates}; {duplicate_report(entries)}")
        print(f"  processed per 5 s during the rollout: {slices}")
        for pod, found in stops.items():
            print(f"  {pod}: " + ", ".join(f"SIGTERM -> final commit, exit {s.seconds:.2f}s, in flight {s.in_flight}, "
                                           f"abandoned {s.abandoned}" if s.seconds is not None else "no 'stopped' line"
                                           for s in found))
        print("  operator decisions during the rollout:")
        print(_decisions(group, rollout_at, rolled_at, start))
        assert all(slices), f"the group stalled during the rollout: {slices}"
        # An old Pod deleted as it started (a scale-up's Pod of the old template, deleted by the rollout at
        # once) is ended by the SIGTERM before its worker ran: nothing to stop gracefully, but never the
        # kubelet's SIGKILL at the end of the grace period (how a worker that was PID 1 ended, see
        # test_real_node's init test).
        never_started = {pod for pod in old_pods if not any(r.get("message") == "worker started" for r in records[pod])}
        for pod in sorted(never_started):
            ended = recording.recorder.how_it_ended(pod)
            print(f"  {pod}: stopped before its worker started: {ended}")
            assert "exit 137" not in ended, f"{pod} was killed at the end of its grace period: {ended}"
        unstopped = [pod for pod, found in stops.items()
                     if pod not in never_started and (not found or found[-1].seconds is None)]
        for pod in unstopped:
            # Printed whole before the assertion (whose message gets cut): how the Pod ended, and its last
            # output, including what is not a log record (a stuck stop's thread stacks, a crash).
            print(f"  {pod} did not stop gracefully: {recording.recorder.how_it_ended(pod)}")
            print("    " + "\n    ".join([*chaos.raw_tail(logs, scenario.namespace, pod, 25),
                                          *scenario.backend.node_log_lines(pod, 10)]))
        assert not unstopped, f"old Pods without a 'stopped' line (see above): {unstopped}"
        print(f"  commit trouble of the old Pods: {commit_trouble}")
        charged = chaos.duplicates_by_first_worker(entries)
        print(f"  duplicates by the worker that ran them first: {charged}")
        # docs/worker.md: a graceful revoke or shutdown commits synchronously and repeats only the records
        # still running when its bound ran out and those of a final commit the broker refused (the group
        # rebalances several times in a rollout), all reported by the worker. Every old Pod stopped
        # gracefully: what it ran first and others ran again is bounded by what it reported.
        bound = sum(chaos.replays_reported(records[pod]) for pod in old_pods)
        replayed = sum(charged.get(pod, 0) for pod in old_pods)
        assert replayed <= bound, (accounting.summary(), charged, stops, commit_trouble, chaos.duplicate_runs(entries))


def _template_hashes(scenario: Scenario, group: Group) -> set[str]:
    out = scenario.kubectl("get", "pods", "-n", scenario.namespace, "-l", f"app={group.name}", "-o",
                           "jsonpath={.items[*].metadata.labels.pod-template-hash}").stdout
    return set(out.split())


def _pod_template_env(scenario: Scenario, deployment: str) -> str:
    return str(scenario.kubectl("get", "deployment", deployment, "-n", scenario.namespace, "-o",
                                "jsonpath={.spec.template.spec.containers[0].env[*].name}").stdout)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


# --- 200 ms between the workers and the broker -------------------------------------------------------------


def test_200ms_latency_to_the_broker_slows_but_loses_nothing(scenario: Scenario, tmp_path: Path) -> None:
    topic = scenario.make_topic("chaos-latency", PARTITIONS)
    group = _group(scenario, topic, replicas_min=2, replicas_max=4)
    ledger = scenario.ledger(group.processed_topic)
    runtime = faults.NodeRuntime(scenario.kubectl, _containerd(scenario))
    broker = faults.Endpoint.parse(scenario.backend.pod_kafka_bootstrap)
    start = time.time()
    load = scenario.load(topic, constant(80, 80))
    phase(10)

    delayed = scenario.worker_pods(group)
    with contextlib.ExitStack() as stack:
        for pod in delayed:
            stack.enter_context(faults.latency(runtime.pod(scenario.namespace, pod), broker, 200,
                                               tmp_path / f"delay-{pod}.log"))
        fault_at = time.time()
        phase(40)
        _assert_host_clean()
    healed_at = time.time()

    result = end_load_after(load, AFTER_FAULT_SECONDS)
    accounting, entries = _account(scenario, group, ledger, result, start)
    _assert_host_clean()
    delay_logs = "; ".join((tmp_path / f"delay-{pod}.log").read_text().strip().splitlines()[-1] for pod in delayed)
    slices = chaos.progress_slices(entries, fault_at, healed_at, 10, workers=delayed)
    print(f"\nlatency 200 ms on {delayed} for {healed_at - fault_at:.0f}s: produced {result.produced}, "
          f"duplicates {accounting.duplicates}; {duplicate_report(entries)}; delayer: {delay_logs}")
    print(f"  processed per 10 s by the delayed Pods: {slices}; by Pods started during the fault: "
          f"{chaos.processed_between(entries, fault_at, healed_at, exclude=delayed)}")
    print("  operator decisions during the fault:")
    print(_decisions(group, fault_at, healed_at, start))
    # Slower, not stopped: every slice of the window has records the delayed Pods finished.
    assert all(slices), f"the delayed workers stalled: {slices}"
    # Latency alone moves no partition: a duplicate could only come from a rebalance (a scale-up joining),
    # whose revocations commit first; bounded by one window per delayed Pod either way.
    assert accounting.duplicates <= WINDOW * len(delayed), accounting.summary()


# --- one worker cut off from the broker for 30 s ------------------------------------------------------------


SESSION_TIMEOUT_MS = 10_000
PARTITION_SECONDS = 30


def test_30s_partition_of_one_worker_fails_over_and_loses_nothing(scenario: Scenario, tmp_path: Path) -> None:
    topic = scenario.make_topic("chaos-partition", PARTITIONS)
    # librdkafka's default session timeout (45 s) outlasts the partition: the group would just wait. 10 s
    # lets the broker evict the cut-off member, so its partitions fail over while the fault lasts.
    group = _group(scenario, topic, replicas_min=3, replicas_max=4,
                   extra_env={"LAGPILOT_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS)})
    ledger = scenario.ledger(group.processed_topic)
    runtime = faults.NodeRuntime(scenario.kubectl, _containerd(scenario))
    broker = faults.Endpoint.parse(scenario.backend.pod_kafka_bootstrap)
    start = time.time()
    load = scenario.load(topic, constant(80, 90))
    phase(15)

    victim = scenario.worker_pods(group)[0]
    with faults.partition(runtime.pod(scenario.namespace, victim), broker) as window:
        phase(PARTITION_SECONDS)
        _assert_host_clean()
    result = end_load_after(load, AFTER_FAULT_SECONDS)
    accounting, entries = _account(scenario, group, ledger, result, start)
    _assert_host_clean()

    held = chaos.partitions_of(entries, victim, window.started - 8, window.started)
    takeover = chaos.takeover_seconds(entries, held, victim, window.started)
    slices = chaos.progress_slices(entries, window.started, window.ended, 5, exclude=[victim])
    print(f"\npartition of {victim} for {window.ended - window.started:.0f}s: produced {result.produced}, "
          f"duplicates {accounting.duplicates}; {duplicate_report(entries)}")
    print(f"  it held partitions {sorted(held)}; taken over by another worker after (s): {takeover}")
    print(f"  processed per 5 s by the other workers during the partition: {slices}")
    print(f"  processed by {victim} after the partition healed: "
          f"{chaos.processed_between(entries, window.ended, time.time(), workers=[victim])}")
    print("  operator decisions during the fault:")
    print(_decisions(group, window.started, window.ended, start))
    assert all(slices), f"the rest of the group stalled during the partition: {slices}"
    assert held, f"{victim} held no partition before the fault"
    # Every partition the cut-off worker held is processed elsewhere before the partition heals: the
    # broker evicts it after the session timeout, the cooperative rebalance hands its partitions on.
    assert set(takeover) == held and max(takeover.values()) < PARTITION_SECONDS, takeover
    # The cut-off worker's uncommitted window is all that can run twice (it finishes what it holds, but
    # cannot commit it; the new owner starts from the last commit).
    assert accounting.duplicates <= WINDOW, accounting.summary()


def _containerd(scenario: Scenario) -> str | None:
    """The node's containerd: the faults enter Pod netns on this machine, which only the node backend has."""
    if getattr(scenario.backend, "name", None) != "node":
        pytest.fail("the chaos scenarios inject faults through the local node's containerd and Pod netns: "
                    "run them with --e2e-backend=node", pytrace=False)
    socket = getattr(scenario.backend, "containerd_socket", None)
    return str(socket) if socket is not None else None


class _Recording:
    """The worker Pods' output copied out while they exist (their "stopping"/"stopped" lines come last)."""

    def __init__(self, scenario: Scenario, out_dir: Path) -> None:
        self.recorder = scenario.backend.pod_recorder(scenario.namespace, out_dir).start()

    def flush(self) -> None:
        self.recorder.flush()

    def close(self) -> None:
        self.recorder.stop()
