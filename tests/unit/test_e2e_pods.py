"""The pure parts of the e2e Pod backends (e2e/pods.py): image references, the kubelet's log format as it
is copied out, and create -> Running times from watch events."""

from __future__ import annotations

import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from e2e.pods import PodRecorder, _LogTail, split_image, timing_summary


def test_split_image_keeps_the_registry_host_in_the_repository() -> None:
    assert split_image("localhost/lagpilot-operator:fdbb68e5") == ("localhost/lagpilot-operator", "fdbb68e5")
    assert split_image("lagpilot-operator:e2e") == ("lagpilot-operator", "e2e")
    with pytest.raises(ValueError):
        split_image("registry:5000/lagpilot-operator")


def test_log_tail_copies_cri_lines_joins_partials_and_ends_when_the_file_is_gone(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    out = tmp_path / "out.log"
    log.write_text('2026-12-04T23:31:36.380Z stdout F {"message": "partitions revoked"}\n'
                   "2026-12-04T23:31:36.381Z stderr P first half, \n")
    tail = _LogTail(log, out)
    assert tail.read()
    assert out.read_text() == '{"message": "partitions revoked"}\n'
    with log.open("a") as handle:
        handle.write("2026-12-04T23:31:36.382Z stderr F second half\n2026-12-04T23:31:36.383Z stdout F last")
    log.unlink()   # the kubelet deletes the Pod's logs: what was written is still read through the handle
    assert not tail.read()
    assert out.read_text().splitlines() == ['{"message": "partitions revoked"}', "first half, second half"]
    tail.close()


def test_log_tail_sees_a_rotated_file_as_gone(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_text("2026-12-04T23:31:36.380Z stdout F one\n")
    tail = _LogTail(log, tmp_path / "out.log")
    log.rename(tmp_path / "0.log.20261204-233136")
    log.write_text("2026-12-04T23:31:37.000Z stdout F two\n")
    assert not tail.read()
    tail.close()


def _pod(name: str, phase: str | None, containers: tuple[str, ...] = ("worker",), *,
         deleting: bool = False, statuses: list[Any] | None = None) -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(name=name, deletion_timestamp="set" if deleting else None),
                           spec=SimpleNamespace(containers=[SimpleNamespace(name=c) for c in containers]),
                           status=SimpleNamespace(phase=phase, container_statuses=statuses))


def _terminated(container_id: str, exit_code: int, reason: str) -> Any:
    started = datetime.datetime(2026, 12, 5, 14, 17, 0, tzinfo=datetime.UTC)
    return SimpleNamespace(container_id=container_id, exit_code=exit_code, reason=reason, signal=None,
                           started_at=started, finished_at=started + datetime.timedelta(seconds=50))


def test_how_a_pod_ended_names_its_deletion_and_each_container_exit(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = PodRecorder(api=None, namespace="ns", out_dir=tmp_path, logs_root=None)
    clock = iter([100.0, 101.0, 120.0, 141.0])
    monkeypatch.setattr("e2e.pods.time.time", lambda: next(clock))
    recorder._observe("ADDED", _pod("a", "Pending"))
    recorder._observe("MODIFIED", _pod("a", "Running"))
    recorder._observe("MODIFIED", _pod("a", "Running", deleting=True))
    killed = SimpleNamespace(name="worker", state=SimpleNamespace(terminated=_terminated("c1", 137, "Error")),
                             last_state=SimpleNamespace(terminated=None))
    recorder._observe("MODIFIED", _pod("a", "Running", deleting=True, statuses=[killed]))
    ended = recorder.how_it_ended("a")
    assert ended.startswith("deleted 1970-01-01T00:02:00+00:00; worker: exit 137 (Error), started 2026-12-05T14:17:00")
    assert "finished 2026-12-05T14:17:50" in ended
    assert recorder.how_it_ended("never") == "never seen by the watch"


def test_create_to_running_counts_pods_seen_created_with_the_container(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = PodRecorder(api=None, namespace="ns", out_dir=tmp_path, logs_root=None)
    clock = iter([100.0, 101.5, 102.0, 100.2, 103.0, 110.0])
    monkeypatch.setattr("e2e.pods.time.time", lambda: next(clock))
    recorder._observe("ADDED", _pod("a", "Pending"))          # 100.0 created
    recorder._observe("MODIFIED", _pod("a", "Running"))       # 101.5 Running
    recorder._observe("MODIFIED", _pod("a", "Running"))       # 102.0 still Running: the first time counts
    recorder._observe("ADDED", _pod("op", "Pending", ("operator",)))     # 100.2
    recorder._observe("MODIFIED", _pod("op", "Running", ("operator",)))  # 103.0
    recorder._observe("MODIFIED", _pod("unseen", "Running"))  # 110.0: never seen created, not timed
    assert recorder.create_to_running() == [1.5]
    assert recorder.create_to_running("operator") == [pytest.approx(2.8)]
    assert timing_summary([1.0, 2.0, 4.0]) == "3 worker Pods, create -> Running median 2.00 s, max 4.00 s"


def test_log_tail_copies_the_last_lines_written_just_before_the_file_went(tmp_path: Path) -> None:
    """The container writes its last lines and the kubelet removes the file between two steps of a read:
    the liveness check comes first, so the read that follows still copies them from the open handle."""
    log = tmp_path / "0.log"
    out = tmp_path / "out.log"
    log.write_text('2026-12-05T11:06:28.871Z stdout F {"message": "partitions assigned"}\n')
    tail = _LogTail(log, out)

    class VanishingPath:
        def stat(self) -> Any:
            with log.open("a") as handle:
                handle.write('2026-12-05T11:06:29.001Z stdout F {"message": "stopped"}\n')
            log.unlink()
            raise FileNotFoundError(str(log))

    tail.path = VanishingPath()  # type: ignore[assignment]
    assert tail.read() is False
    assert out.read_text().splitlines() == ['{"message": "partitions assigned"}', '{"message": "stopped"}']
    tail.close()
