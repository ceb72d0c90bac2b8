"""Pure parts of the real-node fault primitives (e2e/faults.py) and the NFQUEUE delayer (e2e/netdelay.py)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import pytest
from e2e import chaos, faults, netdelay


def test_container_id_is_read_from_the_named_containers_status() -> None:
    pod = {"status": {"containerStatuses": [
        {"name": "sidecar", "containerID": "containerd://aaa"},
        {"name": "worker", "containerID": "containerd://bbb"}]}}
    assert faults.container_id(pod, "worker") == "bbb"
    with pytest.raises(ValueError, match="no status"):
        faults.container_id(pod, "other")
    with pytest.raises(ValueError, match="no containerd id"):
        faults.container_id({"status": {"containerStatuses": [{"name": "worker"}]}}, "worker")


def test_network_namespace_path_is_the_sandboxs() -> None:
    info = {"Spec": {"linux": {"namespaces": [{"type": "pid"}, {"type": "ipc", "path": "/proc/5/ns/ipc"},
                                              {"type": "network", "path": "/proc/5/ns/net"}]}}}
    assert faults.network_namespace_path(info) == "/proc/5/ns/net"
    with pytest.raises(ValueError):
        faults.network_namespace_path({"Spec": {"linux": {"namespaces": [{"type": "network"}]}}})


def test_task_pid_only_for_a_running_task() -> None:
    listing = ("TASK    PID     STATUS    \n"
               "abc     5305    RUNNING\n"
               "def     0       STOPPED\n")
    assert faults.task_pid(listing, "abc") == 5305
    assert faults.task_pid(listing, "def") is None
    assert faults.task_pid(listing, "xyz") is None


def test_task_exit_events_from_ctr_events_lines() -> None:
    clean = ('2026-12-04 23:50:02.421695261 +0000 UTC k8s.io /tasks/exit {"container_id":"ae87","id":"ae87",'
             '"pid":10981,"exited_at":"2026-12-04T23:50:02.42154528Z"}')
    killed = ('2026-12-04 23:50:03.073145239 +0000 UTC k8s.io /tasks/exit {"container_id":"1c0e","id":"1c0e",'
              '"pid":10939,"exit_status":137,"exited_at":"2026-12-04T23:50:03.072920537Z"}')
    delete = ('2026-12-04 23:50:03.096348875 +0000 UTC k8s.io /tasks/delete {"container_id":"1c0e","pid":10939,'
              '"exit_status":137,"exited_at":"2026-12-04T23:50:03.072920537Z"}')
    first = faults.parse_task_exit(clean)
    assert first is not None and first.container_id == "ae87" and first.exit_status == 0
    assert first.exited_at == pytest.approx(1796428202.42154528)
    second = faults.parse_task_exit(killed)
    assert second is not None and second.exit_status == 137
    assert faults.parse_task_exit(delete) is None


def test_partition_rules_drop_both_directions_of_the_broker_port_only() -> None:
    broker = faults.Endpoint.parse("10.88.77.1:19097,10.88.77.1:19098")
    assert broker == faults.Endpoint("10.88.77.1", 19097)
    rules = [faults.iptables_args("-A", rule) for rule in faults.partition_rules(broker, "lagpilot-e2e-fault-x")]
    assert rules == [
        ["iptables", "-w", "-t", "filter", "-A", "OUTPUT", "-d", "10.88.77.1", "-p", "tcp", "--dport", "19097",
         "-m", "comment", "--comment", "lagpilot-e2e-fault-x", "-j", "DROP"],
        ["iptables", "-w", "-t", "filter", "-A", "INPUT", "-s", "10.88.77.1", "-p", "tcp", "--sport", "19097",
         "-m", "comment", "--comment", "lagpilot-e2e-fault-x", "-j", "DROP"],
    ]
    assert faults.iptables_args("-D", faults.partition_rules(broker, "c")[0])[4] == "-D"


def test_latency_rule_queues_with_bypass() -> None:
    (rule,) = faults.latency_rules(faults.Endpoint("10.88.77.1", 19097), "c", queue=3)
    args = faults.iptables_args("-A", rule)
    assert args[3:6] == ["mangle", "-A", "OUTPUT"]
    # Without a bound delayer the kernel lets the packet through instead of dropping it.
    assert args[-4:] == ["NFQUEUE", "--queue-num", "3", "--queue-bypass"]


def test_fault_rules_finds_only_tagged_lines() -> None:
    listing = ("-P INPUT ACCEPT\n-A KUBE-SERVICES -j KUBE-NODEPORTS\n"
               "-A OUTPUT -d 10.88.77.1/32 -m comment --comment lagpilot-e2e-fault-1a -j DROP\n")
    assert faults.fault_rules(listing) == [
        "-A OUTPUT -d 10.88.77.1/32 -m comment --comment lagpilot-e2e-fault-1a -j DROP"]


def test_netlink_messages_have_the_layout_the_kernel_reads() -> None:
    bind, params = netdelay.bind_messages(7)
    length, msg_type, flags, _seq, _pid = netdelay.NLMSG_HDR.unpack_from(bind)
    assert length == len(bind)
    assert msg_type == (3 << 8) | 2 and flags == netdelay.NLM_F_REQUEST | netdelay.NLM_F_ACK
    assert netdelay.NFGEN_HDR.unpack_from(bind, 16) == (0, 0, 7)
    # NFQA_CFG_CMD: len 8, type 1, command BIND, pad, pf 0
    assert bind[20:28] == struct.pack("=HH", 8, 1) + bytes([1, 0, 0, 0])
    # NFQA_CFG_PARAMS (copy range 0, COPY_META) is padded to 4 bytes; then the queue length.
    assert params[20:32] == struct.pack("=HH", 9, 2) + struct.pack("!IB", 0, 1) + b"\0\0\0"
    assert params[32:40] == struct.pack("=HH", 8, 3) + struct.pack("!I", netdelay.QUEUE_MAXLEN)

    verdict = netdelay.verdict_message(7, 0x01020304)
    assert netdelay.NLMSG_HDR.unpack_from(verdict)[1] == (3 << 8) | 1
    assert verdict[20:32] == struct.pack("=HH", 12, 2) + struct.pack("!II", 1, 0x01020304)


def test_queued_packet_ids_are_parsed_from_a_datagram_of_several_messages() -> None:
    def packet(packet_id: int) -> bytes:
        mark = netdelay.attribute(6, struct.pack("!I", 9))                 # another attribute first
        header = netdelay.attribute(1 | 0x8000, struct.pack("!IHB", packet_id, 0x0800, 3))  # NLA_F_NESTED bit set
        return netdelay.message(netdelay.NFQNL_MSG_PACKET, 7, mark + header, flags=0)

    datagram = packet(41) + packet(42)
    parsed = [(t, netdelay.packet_id(p)) for t, p in netdelay.iter_messages(datagram)]
    assert parsed == [((3 << 8), 41), ((3 << 8), 42)]
    error = netdelay.NLMSG_HDR.pack(36, netdelay.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    ((msg_type, payload),) = netdelay.iter_messages(error)
    assert msg_type == netdelay.NLMSG_ERROR and netdelay.ack_error(payload) == 1


def test_delay_line_releases_in_order_once_due() -> None:
    line = netdelay.DelayLine(0.2)
    line.arrive(1, 10.0)
    line.arrive(2, 10.05)
    assert line.due(10.19) == []
    assert line.next_due_in(10.19, idle=1.0) == pytest.approx(0.01)
    assert line.due(10.2) == [1]
    assert line.due(10.3) == [2]
    assert line.next_due_in(10.3, idle=1.0) == 1.0
    assert line.released == 2


# --- e2e/chaos.py ---------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    time: float
    status: dict[str, Any]


def test_decision_timeline_lists_changes_inside_the_window_only() -> None:
    def status(replicas: int, pool: int, reason: str, lag: int = 0) -> dict[str, Any]:
        return {"desiredReplicas": replicas, "poolSize": pool, "lastDecision": reason, "totalLag": lag}

    snapshots = [Snapshot(100, status(2, 2, "steady")), Snapshot(105, status(2, 2, "steady", lag=50)),
                 Snapshot(110, status(3, 2, "scale up: lag")), Snapshot(130, status(3, 3, "pool up")),
                 Snapshot(150, status(2, 3, "scale down"))]
    lines = chaos.decision_timeline(snapshots, since=104, until=140, origin=100)
    assert lines == ["+ 10.0s replicas=3 pool=2 lag=0: scale up: lag", "+ 30.0s replicas=3 pool=3 lag=0: pool up"]


def test_progress_slices_show_a_stall_as_zero_and_filter_workers() -> None:
    entries = [{"worker": "a", "processedMs": 1000_500}, {"worker": "b", "processedMs": 1001_500},
               {"worker": "a", "processedMs": 1005_500}]
    assert chaos.progress_slices(entries, 1000, 1006, 2) == [2, 0, 1]
    assert chaos.progress_slices(entries, 1000, 1006, 2, exclude=["a"]) == [1, 0, 0]
    assert chaos.progress_slices(entries, 1000, 1006, 2, workers=["a"]) == [1, 0, 1]
    # A window a little longer than whole slices has no sliver of a slice at its end.
    assert chaos.progress_slices(entries, 1000, 1006.3, 2) == [2, 0, 1]
    assert chaos.last_processed(entries) == 1005.5


def test_takeover_is_the_first_entry_of_another_worker_after_the_fault() -> None:
    entries = [{"worker": "v", "partition": 1, "processedMs": 99_000}, {"worker": "v", "partition": 2,
                                                                          "processedMs": 99_500},
               {"worker": "o", "partition": 1, "processedMs": 98_000},   # before the fault: not a takeover
               {"worker": "o", "partition": 1, "processedMs": 112_000}, {"worker": "o", "partition": 1,
                                                                          "processedMs": 111_000},
               {"worker": "v", "partition": 2, "processedMs": 105_000}]
    held = chaos.partitions_of(entries, "v", 98.5, 100)
    assert held == {1, 2}
    assert chaos.takeover_seconds(entries, held, "v", 100) == {1: 11.0}


def test_shutdowns_read_from_the_workers_json_lines() -> None:
    lines = [
        '{"time": "2026-12-04T23:00:00.000Z", "message": "worker started"}',
        "%7|librdkafka noise",
        '{"time": "2026-12-04T23:00:10.250Z", "message": "stopping: finishing the records in hand",'
        ' "in_flight_records": 12}',
        '{"time": "2026-12-04T23:00:10.900Z", "message": "stopped", "group": "g"}',
        '{"time": "2026-12-04T23:01:00.000Z", "message": "stopping: finishing the records in hand",'
        ' "in_flight_records": 40}',
        '{"time": "2026-12-04T23:01:10.000Z", "message": "shutdown deadline reached: abandoned work will be '
        'delivered again", "records": 5, "abandoned_records": 7}',
    ]
    first, second = chaos.shutdowns(chaos.log_records(lines))
    assert first.in_flight == 12 and first.abandoned == 0
    assert first.seconds == pytest.approx(0.65)
    assert chaos.log_time("2026-12-04T23:00:10.250Z") == pytest.approx(1796425210.25)
    assert second.stopped is None and second.seconds is None and second.abandoned == 7


def test_commit_trouble_counts_failed_commits_and_lost_partitions() -> None:
    records = [{"message": "asynchronous commit failed, will commit again: KafkaError{code=ILLEGAL_GENERATION}"},
               {"message": "asynchronous commit failed, will commit again: x"},
               {"message": "commit failed for [('t', 1, 'x')]"},
               {"message": "partitions lost (another member may own them now); nothing is committed for them"},
               {"message": "partitions revoked"}]
    assert chaos.commit_trouble(records) == {"async_commit_failed": 2, "commit_failed": 1, "partitions_lost": 1}


def test_duplicates_are_charged_to_the_worker_that_ran_the_record_first() -> None:
    entries = [{"id": "a", "worker": "w2", "processedMs": 20}, {"id": "a", "worker": "w1", "processedMs": 10},
               {"id": "b", "worker": "w2", "processedMs": 5}, {"id": "b", "worker": "w3", "processedMs": 30},
               {"id": "b", "worker": "w3", "processedMs": 31}, {"id": "c", "worker": "w1", "processedMs": 1}]
    assert chaos.duplicates_by_first_worker(entries) == {"w1": 1, "w2": 2}


def test_replays_reported_sum_revoke_abandoned_refused_and_shutdown_abandoned() -> None:
    records = [
        {"message": "partitions revoked", "abandoned_records": 2, "refused_records": 40},
        {"message": "partitions revoked", "abandoned_records": 0, "refused_records": 0},
        {"message": "partitions revoked", "abandoned_records": 1},  # a worker before refused_records
        {"message": "shutdown deadline reached: abandoned work will be delivered again", "abandoned_records": 3},
        {"message": "asynchronous commit failed, will commit again: ILLEGAL_GENERATION"},
        {"message": "the broker refused the final commit at shutdown: its uncommitted records run again on the "
                    "next owner", "refused_records": 5},
    ]
    assert chaos.replays_reported(records) == 51
    assert chaos.replays_reported([]) == 0


def test_duplicate_runs_name_each_record_run_twice_with_every_run_s_worker_and_time() -> None:
    entries = [{"id": "a", "worker": "w1", "partition": 0, "offset": 7, "processedMs": 1_700_000_000_100},
               {"id": "a", "worker": "w2", "partition": 0, "offset": 7, "processedMs": 1_700_000_014_700},
               {"id": "b", "worker": "w1", "partition": 1, "offset": 3, "processedMs": 1_700_000_000_200}]
    assert chaos.duplicate_runs(entries) == ["p0@7: w1 22:13:20.100 -> w2 22:13:34.700"]
    assert chaos.duplicate_runs(entries[2:]) == []
