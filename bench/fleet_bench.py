"""One operator process serving a fleet of KafkaConsumerGroups over several Kafka clusters.

Real pieces only: the stack's kube-apiserver, the stack's Kafka broker plus `--clusters - 1` private
brokers of the bench's own (`e2e.harness.PrivateBroker`: the stack's recipe on free ports), and the
operator as `kopf run` in a subprocess watching a namespace of its own. Every resource has a topic of
`--partitions / --resources` partitions with one record per partition and a group that committed it
(caught up: lag 0, nothing moves), `lagThreshold` with `lagPerConsumer` = partitions, replicas 1-3, so
the steady decision is 1 replica. Half the resources scale a Deployment of their own
(`scaleTargetRef`), the other half own one (`template` mode). The Deployments are paused with a
nodeSelector no node matches: replicas are set, no Pod ever runs.

Measured, in a steady window after every resource has decided (nothing changes in Kafka):
* CPU of the operator process (every thread, librdkafka's included) per resource-poll, and the
  resources one core keeps at the polling interval;
* RSS (now and peak) of the operator process;
* Kubernetes API requests/s by verb: the operator talks to the API server through `kubectl proxy -v=6`,
  whose request log is counted (only the operator's requests pass through it);
* Kafka requests/s by type, from the operator's `lagpilot_kafka_requests_total` (librdkafka statistics).
Then every topic gets three more records per partition (lag = 3 x partitions -> 3 replicas) and the bench
times how long until every resource's decision is 3 (`lag_change_decided_seconds`, from the operator's
`lagpilot_desired_replicas`) and until every status shows it (`lag_change_in_status_seconds`).

    source .stack/env; .venv/bin/python bench/fleet_bench.py --resources 200 --partitions 2000 [--label after]
    # the code of another checkout: --operator-path /tmp/before/operator

Prints progress lines, then one JSON object (the result) as the last line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # e2e.harness imports tests/support.py
from e2e.harness import PrivateBroker  # noqa: E402

GROUP, VERSION, PLURAL = "lagpilot.io", "v1alpha1", "kafkaconsumergroups"
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubectl(*args: str, input_text: str | None = None) -> str:
    result = subprocess.run([str(Path(os.environ["LAGPILOT_BIN_DIR"]) / "kubectl"), *args], input=input_text,
                            text=True, capture_output=True, check=True)
    return result.stdout


def wait_until(check: Any, timeout: float, what: str, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# --- Kafka side ------------------------------------------------------------------------------------------


def prepare_kafka(bootstrap: str, topics: list[str], groups: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, partitions, 1) for t in topics]).values():
        future.result(timeout=300)
    produce(bootstrap, topics, partitions, 1)

    def commit(pair: tuple[str, str]) -> None:
        topic, group = pair
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        deadline = time.monotonic() + 120
        while True:  # a new topic's partitions need leaders before a commit succeeds
            try:
                consumer.commit(offsets=[TopicPartition(topic, p, 1) for p in range(partitions)],
                                asynchronous=False)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        consumer.close()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(commit, zip(topics, groups, strict=True)))


def produce(bootstrap: str, topics: list[str], partitions: int, per_partition: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for topic in topics:
        for partition in range(partitions):
            for _ in range(per_partition):
                producer.produce(topic, value=b"x", partition=partition)
        producer.poll(0)
    assert producer.flush(600) == 0  # fresh partitions on a fresh broker: leaders can take minutes


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(topics).values():
        try:
            future.result(timeout=120)
        except Exception as exc:  # cleanup: report, go on
            log(f"deleting a topic failed: {exc}")


# --- Kubernetes side -------------------------------------------------------------------------------------


def pod_template(name: str) -> dict[str, Any]:
    # Paused with a nodeSelector no node has: the replicas are a number the operator sets, nothing runs.
    return {"metadata": {"labels": {"app": name}},
            "spec": {"nodeSelector": {"lagpilot.io/fleet-bench": "no-such-node"},
                     "containers": [{"name": "worker", "image": "registry.invalid/worker:1"}]}}


def deployment(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 1, "paused": True, "selector": {"matchLabels": {"app": name}},
                     "template": pod_template(name)}}


def resource(namespace: str, name: str, bootstrap: str, group: str, topic: str, partitions: int, interval: int,
             templated: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "kafka": {"bootstrapServers": bootstrap}, "groupId": group, "topics": [topic],
        "replicas": {"min": 1, "max": 3}, "pool": {"min": 1, "max": 1, "initial": 1},
        "lag": {"pollIntervalSeconds": interval},
        "policy": {"mode": "lagThreshold", "lagThreshold": {"lagPerConsumer": partitions},
                   "scaleUp": {"stabilizationSeconds": 0, "maxStepPercent": 1000, "minStep": 100,
                               "periodSeconds": 1}},
        "deadLetter": {"enabled": False},
    }
    if templated:
        spec["template"] = {"spec": {"paused": True, "selector": {"matchLabels": {"app": name}},
                                     "template": pod_template(name)}}
    else:
        spec["scaleTargetRef"] = {"name": name}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "KafkaConsumerGroup",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def apply_list(items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), 200):
        kubectl("apply", "-f", "-", input_text=yaml.safe_dump({"apiVersion": "v1", "kind": "List",
                                                               "items": items[start:start + 200]}))


def statuses(namespace: str) -> dict[str, dict[str, Any]]:
    found = client.CustomObjectsApi().list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return {item["metadata"]["name"]: dict(item.get("status") or {}) for item in found["items"]}


def events_by_reason(namespace: str) -> Counter[str]:
    """Events in the namespace by reason, each weighted by its repeat count."""
    found = client.CoreV1Api().list_namespaced_event(namespace)
    return sum(
        (Counter({event.reason or "?": event.count or 1}) for event in found.items), Counter())


def drop_finalizers(namespace: str, names: list[str]) -> None:
    api = client.CustomObjectsApi()

    def drop(name: str) -> None:
        try:
            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                               {"metadata": {"finalizers": None}})
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(drop, names))


# --- the operator and what it costs ----------------------------------------------------------------------


class ApiProxy:
    """`kubectl proxy -v=6`: the operator's only way to the API server; its log lists every request."""

    LINE = re.compile(r'verb="(?P<verb>[A-Z]+)" url="(?P<url>[^"]+)"|\] (?P<verb2>GET|POST|PUT|PATCH|DELETE) '
                      r'(?P<url2>https?://\S+)')

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "kubectl-proxy.log"
        self.kubeconfig = workdir / "operator.kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
            "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}]}))
        self.process = subprocess.Popen(
            [str(Path(os.environ["LAGPILOT_BIN_DIR"]) / "kubectl"), "proxy", f"--port={self.port}",
             "--address=127.0.0.1", "-v=6"], stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)
        wait_until(lambda: _answers(f"http://127.0.0.1:{self.port}/version"), 30, "kubectl proxy")

    def requests(self) -> Counter[tuple[str, str]]:
        """(verb, resource kind) -> count, so far."""
        counts: Counter[tuple[str, str]] = Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = self.LINE.search(line)
            if match is None:
                continue
            verb = match.group("verb") or match.group("verb2")
            url = (match.group("url") or match.group("url2")).split("?")[0]
            parts = [p for p in url.split("/")[3:] if p]
            kind = _kind(parts)
            counts[(verb, kind)] += 1
        return counts

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _kind(parts: list[str]) -> str:
    """'deployments', 'deployments/scale', 'kafkaconsumergroups/status', ... from a URL path."""
    if "namespaces" in parts:
        after = parts[parts.index("namespaces") + 2:]
    else:
        after = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if not after:
        return "namespaces" if "namespaces" in parts else "/".join(parts[:3])
    return after[0] + (f"/{after[2]}" if len(after) > 2 else "")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (http to the local proxy)
            return True
    except OSError:
        return False


class Operator:
    def __init__(self, namespace: str, kubeconfig: Path, workdir: Path, operator_path: str | None) -> None:
        self.metrics_port = free_port()
        # A 20 s stuck-partition window: the groups never commit, so their partitions turn STALLED once
        # (a real change, written and announced); the steady window starts after that.
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "LAGPILOT_METRICS_PORT": str(self.metrics_port),
               "LAGPILOT_METRICS_ADDRESS": "127.0.0.1", "LAGPILOT_VERDICT_WINDOW_SECONDS": "20"}
        if operator_path:
            env["PYTHONPATH"] = os.pathsep.join([operator_path, env.get("PYTHONPATH", "")])
        self.log_path = workdir / "operator.log"
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "kopf"), "run", "--standalone", "--namespace", namespace,
             "-m", "lagpilot_operator.handlers"], env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> tuple[float, float]:
        values = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(("lagpilot_reconcile_duration_seconds_count", "lagpilot_kafka_requests_total")):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def desired_replicas(self) -> dict[str, float]:
        """lagpilot_desired_replicas by resource name: what each resource's last decision asked for."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^lagpilot_desired_replicas\{[^}]*name="([^"]+)"[^}]*\} (\S+)$', text, re.MULTILINE)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def kafka_requests(values: dict[str, float]) -> dict[str, float]:
    found: dict[str, float] = {}
    for key, value in values.items():
        match = re.match(r'lagpilot_kafka_requests_total\{request="([^"]+)"\}', key)
        if match:
            found[match.group(1)] = value
    return found


# --- the run ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=10000, help="partitions in all")
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument("--label", default="")
    parser.add_argument("--operator-path", help="import lagpilot_operator from here (another checkout's operator/)")
    args = parser.parse_args()
    per_resource = max(1, args.partitions // args.resources)
    config.load_kube_config()
    suffix = uuid.uuid4().hex[:6]
    namespace = f"fleet-{suffix}"
    workdir = Path(tempfile.mkdtemp(prefix=f"fleet-bench-{suffix}-"))
    brokers: list[PrivateBroker] = []
    proxy: ApiProxy | None = None
    operator: Operator | None = None
    names = [f"r{i:04d}" for i in range(args.resources)]
    topics = [f"fleet-{suffix}-{i:04d}" for i in range(args.resources)]
    groups = [f"fleet-{suffix}-g{i:04d}" for i in range(args.resources)]
    bootstraps = [os.environ["KAFKA_BOOTSTRAP_SERVERS"]]
    result: dict[str, Any] = {"label": args.label, "resources": args.resources, "clusters": args.clusters,
                              "partitions": per_resource * args.resources, "interval_seconds": args.interval}
    try:
        os.environ["LAGPILOT_NODE"] = "0"  # the private brokers need no listener for Pods
        for index in range(1, args.clusters):
            log(f"starting private broker {index}")
            brokers.append(PrivateBroker(workdir / f"broker-{index}").start())
            bootstraps.append(brokers[-1].bootstrap)
        cluster_of = [i % len(bootstraps) for i in range(args.resources)]
        log(f"topics and groups: {args.resources} x {per_resource} partitions over {len(bootstraps)} clusters")
        with concurrent.futures.ThreadPoolExecutor(len(bootstraps)) as pool:
            list(pool.map(lambda c: prepare_kafka(
                bootstraps[c], [t for t, k in zip(topics, cluster_of, strict=True) if k == c],
                [g for g, k in zip(groups, cluster_of, strict=True) if k == c], per_resource),
                range(len(bootstraps))))
        kubectl("create", "namespace", namespace)
        apply_list([deployment(namespace, name) for i, name in enumerate(names) if i % 2 == 0])
        apply_list([resource(namespace, name, bootstraps[cluster_of[i]], groups[i], topics[i], per_resource,
                             args.interval, templated=i % 2 == 1) for i, name in enumerate(names)])
        proxy = ApiProxy(workdir)
        log("starting the operator")
        started = time.monotonic()
        operator = Operator(namespace, proxy.kubeconfig, workdir, args.operator_path)

        def all_decided() -> bool:
            found = statuses(namespace)
            return sum(1 for s in found.values() if s.get("desiredReplicas") == 1
                       and s.get("totalLag") == 0) == args.resources

        wait_until(all_decided, 900, "every resource's first decision", every=2)
        result["all_decided_seconds"] = round(time.monotonic() - started, 1)
        log(f"every resource decided after {result['all_decided_seconds']} s; settling 3 intervals")
        time.sleep(3 * args.interval)

        log(f"steady window: {args.steady_seconds:.0f} s")
        events0 = events_by_reason(namespace)
        cpu0, requests0, metrics0, t0 = operator.cpu_seconds(), proxy.requests(), operator.metrics(), time.monotonic()
        time.sleep(args.steady_seconds)
        cpu1, requests1, metrics1, t1 = operator.cpu_seconds(), proxy.requests(), operator.metrics(), time.monotonic()
        events1 = events_by_reason(namespace)
        rss, rss_peak = operator.rss_mib()
        window = t1 - t0
        reconciles = (metrics1.get("lagpilot_reconcile_duration_seconds_count", 0)
                      - metrics0.get("lagpilot_reconcile_duration_seconds_count", 0))
        cpu = cpu1 - cpu0
        api = {f"{verb} {kind}": round((requests1[(verb, kind)] - requests0.get((verb, kind), 0)) / window, 2)
               for verb, kind in requests1 if requests1[(verb, kind)] > requests0.get((verb, kind), 0)}
        kafka0, kafka1 = kafka_requests(metrics0), kafka_requests(metrics1)
        kafka = {k: round((v - kafka0.get(k, 0)) / window, 2) for k, v in kafka1.items() if v > kafka0.get(k, 0)}
        result.update({
            "steady_window_seconds": round(window, 1),
            "cpu_seconds": round(cpu, 2),
            "cpu_cores_used": round(cpu / window, 3),
            "resource_polls": int(reconciles),
            "cpu_ms_per_resource_poll": round(cpu / max(reconciles, 1) * 1000, 2),
            "resources_per_core_at_interval": int(args.interval / max(cpu / max(reconciles, 1), 1e-9)),
            "rss_mib": round(rss, 1), "rss_peak_mib": round(rss_peak, 1),
            "api_writes_per_second": round(sum(v for k, v in api.items() if k.split()[0] in WRITE_VERBS), 2),
            "api_reads_per_second": round(sum(v for k, v in api.items() if k.split()[0] == "GET"), 2),
            "api_requests_per_second": dict(sorted(api.items())),
            "events_in_window_by_reason": dict(events1 - events0),
            "kafka_requests_per_second": round(sum(kafka.values()), 2),
            "kafka_requests_by_type_per_second": dict(sorted(kafka.items())),
        })
        log(json.dumps(result))

        log("lag change: three more records in every partition of every topic")
        change_start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(bootstraps)) as pool:
            list(pool.map(lambda c: produce(bootstraps[c], [t for t, k in zip(topics, cluster_of, strict=True)
                                                            if k == c], per_resource, 3), range(len(bootstraps))))
        produced = time.monotonic() - change_start
        decided: dict[str, float] = {}
        seen: dict[str, float] = {}

        def all_decided_on_it() -> bool:
            now = time.monotonic() - change_start
            for name, replicas in operator.desired_replicas().items():
                if name not in decided and replicas == 3:
                    decided[name] = now
            return len(decided) == args.resources

        def all_seen() -> bool:
            now = time.monotonic() - change_start
            for name, status in statuses(namespace).items():
                if name not in seen and status.get("desiredReplicas") == 3:
                    seen[name] = now
            return len(seen) == args.resources

        wait_until(all_decided_on_it, 300, "every resource deciding on the lag change", every=0.25)
        wait_until(all_seen, 300, "every status showing the new decision", every=1.0)
        for key, found in (("lag_change_decided_seconds", decided), ("lag_change_in_status_seconds", seen)):
            times = sorted(found.values())
            result[key] = {"p50": round(statistics.median(times), 2), "max": round(times[-1], 2)}
        result["lag_change_produced_in_seconds"] = round(produced, 2)
        result["lag_change_decided_within_one_interval"] = result["lag_change_decided_seconds"]["max"] <= (
            args.interval + produced)
        print(json.dumps(result), flush=True)
        return 0
    finally:
        if operator is not None:
            operator.stop()
        if proxy is not None:
            proxy.stop()
        try:
            drop_finalizers(namespace, names)
            kubectl("delete", "namespace", namespace, "--wait=false")
        except Exception as exc:
            log(f"cleanup of {namespace}: {exc}")
        delete_topics(bootstraps[0], [t for t, k in zip(topics, [i % len(bootstraps) for i in range(args.resources)],
                                                          strict=True) if k == 0])
        for broker in brokers:
            broker.stop()
        log(f"logs in {workdir}")


if __name__ == "__main__":
    raise SystemExit(main())
