"""Reading a consumer group's offsets from Kafka's admin API (I/O).

One AdminClient is shared per cluster and credentials (librdkafka clients are thread-safe and
expensive: each keeps connections and a background thread). The calls are batched: one metadata
call, one committed-offsets call, one `list_offsets` per offset kind for every partition at once,
one group description. All calls are blocking; the reconcile loop runs them in a thread.

The operator reads consumer groups per cluster, for every resource on it at once (`cluster_observer`);
`read_lag` reads one group on its own (benchmarks, tests), `read_log_offsets` a share group's topics.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import hashlib
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from typing import Any, Literal

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    ConsumerGroupType,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from confluent_kafka.cimpl import _AdminClientImpl

from lagpilot_operator import operator_metrics as metrics
from lagpilot_operator.core.observations import GroupProtocol, LagSample, PartitionKey, PartitionOffsets
from lagpilot_operator.kube.models import KafkaConnection

SECRET_SETTINGS = frozenset({"sasl.password", "ssl.key.pem", "sasl.username"})
_UNREACHABLE = {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
                KafkaError._RESOLVE, KafkaError.NETWORK_EXCEPTION, KafkaError.REQUEST_TIMED_OUT}
_AUTHORIZATION = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                  KafkaError.CLUSTER_AUTHORIZATION_FAILED}
# A refused login or a failed TLS handshake is reported only through the client's error callback;
# the request itself then fails like an unreachable cluster. Remembered per client to name the real cause.
_AUTHENTICATION = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_last_client_error: dict[int, KafkaError] = {}

REASON_AUTHENTICATION_FAILED = "AuthenticationFailed"
REASON_TLS_VERIFICATION_FAILED = "TLSVerificationFailed"
REASON_TLS_HANDSHAKE_FAILED = "TLSHandshakeFailed"
# OpenSSL's words, as librdkafka passes them on, when the client cannot verify the broker's certificate
# ("certificate verify failed", plus librdkafka's hint "broker certificate could not be verified").
_VERIFY_FAILED_WORDS = ("certificate verify failed", "could not be verified")
# A TLS alert from the broker (it refused or found no client certificate: "ssl/tls alert bad certificate:
# SSL alert number 42"). With TLS 1.3 the alert comes after the client finished its half of the
# handshake, so librdkafka reports it as a _TRANSPORT receive failure, not as _SSL. A TLS client at a
# PLAINTEXT listener is also a _TRANSPORT error: "SSL handshake failed: Disconnected: SSL connection closed
# by peer: connecting to a PLAINTEXT broker listener?".
_TLS_ALERT_WORDS = ("ssl alert number", "ssl/tls alert", "tlsv13 alert", "tlsv1 alert", "ssl handshake failed")


class LagReadError(Exception):
    """Lag could not be read. `reason` is a CamelCase condition reason; the message has no secrets."""

    reason = "KafkaError"


class KafkaUnreachable(LagReadError):
    reason = "KafkaUnreachable"


class KafkaAuthorizationFailed(LagReadError):
    reason = "AuthorizationFailed"


class KafkaAuthenticationFailed(LagReadError):
    reason = REASON_AUTHENTICATION_FAILED


class KafkaTlsVerificationFailed(LagReadError):
    reason = REASON_TLS_VERIFICATION_FAILED


class KafkaTlsHandshakeFailed(LagReadError):
    reason = REASON_TLS_HANDSHAKE_FAILED


class TopicMissing(LagReadError):
    reason = "TopicMissing"


class CredentialsUnavailable(LagReadError):
    reason = "SecretNotFound"


class SecretKeyUnreadable(CredentialsUnavailable):
    """A referenced Secret key holds something librdkafka cannot take as text (e.g. a PKCS#12 file)."""

    reason = "SecretKeyUnreadable"


def decode_secret_keys(secret_name: str, data: Mapping[str, str | bytes], keys: Collection[str],
                       pem_keys: Collection[str] = ()) -> dict[str, str]:
    """{'secret/key': text} for the `keys` of a Secret's base64 `data`; other keys are never decoded.

    A key in `pem_keys` must be UTF-8 PEM text (librdkafka's `ssl.*.pem`). The error names the
    Secret and the key, never the value.
    """
    values: dict[str, str] = {}
    for key in sorted(set(keys) & set(data)):
        where = f"Secret {secret_name} key {key}"
        try:
            text = base64.b64decode(data[key], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            kind = "base64" if isinstance(exc, binascii.Error) else "UTF-8 text"
            hint = " (a PKCS#12 or DER file? reference the PEM key, e.g. ca.crt)" if key in pem_keys else ""
            raise SecretKeyUnreadable(f"{where} is not {kind}{hint}; point spec.kafka.security at a key holding "
                                      "text") from None
        if key in pem_keys and "-----BEGIN " not in text:
            raise SecretKeyUnreadable(f"{where} is not PEM (no -----BEGIN line); TLS settings need PEM text "
                                      "(e.g. a Strimzi cluster CA Secret's ca.crt, not ca.p12)")
        values[f"{secret_name}/{key}"] = text
    return values


def client_settings(connection: KafkaConnection, secret_values: Mapping[str, str]) -> dict[str, str]:
    """librdkafka settings for `connection`; `secret_values` maps 'secretName/key' to the value read."""

    def secret(ref: Any) -> str:
        path = f"{ref.name}/{ref.key}"
        if path not in secret_values:
            raise CredentialsUnavailable(f"Secret key {path} is not available")
        return secret_values[path]

    settings = {"bootstrap.servers": connection.bootstrap_servers}
    security = connection.security
    if security is None:
        return settings
    settings["security.protocol"] = security.protocol
    if security.sasl is not None:
        settings["sasl.mechanism"] = security.sasl.mechanism
        settings["sasl.username"] = secret(security.sasl.username_secret_ref)
        settings["sasl.password"] = secret(security.sasl.password_secret_ref)
    if security.tls is not None:
        if security.tls.ca_secret_ref is not None:
            settings["ssl.ca.pem"] = secret(security.tls.ca_secret_ref)
        if security.tls.cert_secret_ref is not None:
            settings["ssl.certificate.pem"] = secret(security.tls.cert_secret_ref)
        if security.tls.key_secret_ref is not None:
            settings["ssl.key.pem"] = secret(security.tls.key_secret_ref)
    return settings


def secret_refs(connection: KafkaConnection) -> list[tuple[str, str]]:
    """The (secret name, key) pairs `connection` needs, to be read from the API server."""
    security = connection.security
    refs: list[Any] = []
    if security is not None and security.sasl is not None:
        refs += [security.sasl.username_secret_ref, security.sasl.password_secret_ref]
    if security is not None and security.tls is not None:
        refs += [security.tls.ca_secret_ref, security.tls.cert_secret_ref, security.tls.key_secret_ref]
    return [(ref.name, ref.key) for ref in refs if ref is not None]


def secret_names(refs: list[tuple[str, str]]) -> tuple[str, ...]:
    """The Secrets `refs` (from `secret_refs`) name, each once, in order."""
    return tuple(sorted({name for name, _ in refs}))


def pem_secret_refs(connection: KafkaConnection) -> list[tuple[str, str]]:
    """The (secret name, key) pairs that must hold PEM text (the TLS ones)."""
    tls = connection.security.tls if connection.security is not None else None
    if tls is None:
        return []
    refs = [tls.ca_secret_ref, tls.cert_secret_ref, tls.key_secret_ref]
    return [(ref.name, ref.key) for ref in refs if ref is not None]


def settings_fingerprint(settings: Mapping[str, str]) -> str:
    """A key for the client cache that does not keep credentials in plain text."""
    digest = hashlib.sha256()
    for key in sorted(settings):
        digest.update(f"{key}\0{settings[key]}\0".encode())
    return digest.hexdigest()


def redacted(settings: Mapping[str, str]) -> dict[str, str]:
    return {k: ("***" if k in SECRET_SETTINGS else v) for k, v in settings.items()}


class ClientLeases:
    """Which resources use which client key (pure bookkeeping): a key nobody uses any more is returned
    for eviction, when its last user moved to other credentials or went away."""

    def __init__(self) -> None:
        self._key_of: dict[Hashable, str] = {}

    def assign(self, owner: Hashable, key: str) -> set[str]:
        """`owner` now uses `key`; returns the keys left without users (evict them)."""
        previous = self._key_of.get(owner)
        self._key_of[owner] = key
        return self._unused({previous} - {key, None})

    def release(self, owner: Hashable) -> set[str]:
        """`owner` is gone; returns the keys left without users."""
        return self._unused({self._key_of.pop(owner, None)} - {None})

    def users(self, key: str) -> int:
        return sum(1 for used in self._key_of.values() if used == key)

    def _unused(self, keys: set[str | None]) -> set[str]:
        return {key for key in keys if key is not None and self.users(key) == 0}


RECONNECT_BACKOFF_MS = 1000


class AdminClientPool:
    """One AdminClient per distinct (cluster, credentials); shared by every resource that uses it.

    A resource that passes `owner` leases its client: when its credentials change (another key) or it
    goes (`release`), a client no other resource uses is dropped, so rotated passwords do not leave
    clients (threads, connections) behind.
    """

    def __init__(self, request_timeout_ms: int = 5000) -> None:
        self._clients: dict[str, AdminClient] = {}
        self._lock = threading.Lock()
        self._request_timeout_ms = request_timeout_ms
        self._leases = ClientLeases()

    def get(self, settings: Mapping[str, str], owner: Hashable | None = None) -> AdminClient:
        key = settings_fingerprint(settings)
        with self._lock:
            if owner is not None:
                for unused in self._leases.assign(owner, key):
                    self._clients.pop(unused, None)
            client = self._clients.get(key)
            if client is None:
                config: dict[str, Any] = dict(settings)
                config.setdefault("socket.timeout.ms", str(self._request_timeout_ms))
                # librdkafka retried a refused connection every ~50 ms at its default (100), logging each
                # failure: 20 log lines a second per client for one cluster that is down. A second between
                # attempts costs a recovering cluster at most one second, less than a poll interval.
                config.setdefault("reconnect.backoff.ms", str(RECONNECT_BACKOFF_MS))
                config.setdefault("client.id", "lagpilot-operator")
                created: list[int] = []

                def remember(error: KafkaError) -> None:
                    # Only a cause is kept: the "all brokers down" that follows a failed handshake must
                    # not hide it.
                    if created and connection_failure_reason(error.code(), error.str()) is not None:
                        _last_client_error[created[0]] = error

                config["error_cb"] = remember
                client = self._clients[key] = AdminClient(config)
                created.append(id(client))
            return client

    def discard(self, settings: Mapping[str, str]) -> None:
        """Forget the client of `settings`: the next `get` builds a new one.

        After a broker stops answering for a while, librdkafka's admin client can keep failing long
        after the broker is back (seen with a 30 s outage: > 2 min of failures, while a new client
        succeeded at once), so a read that failed in a way the cluster may recover from retires its
        client (`retire_client_after`).
        """
        with self._lock:
            self._clients.pop(settings_fingerprint(settings), None)

    def release(self, owner: Hashable) -> None:
        """`owner` (a resource) is gone: drop its client unless another resource uses it."""
        with self._lock:
            for unused in self._leases.release(owner):
                self._clients.pop(unused, None)

    def __len__(self) -> int:
        return len(self._clients)


def retire_client_after(error: LagReadError) -> bool:
    """Whether a read that failed with `error` should retire its client (pure).

    After a broker stops answering for a while, librdkafka's admin client can keep failing long after
    the broker is back, not only with timeouts: its cached view of leaders and coordinators from the
    outage makes the offset calls fail with errors such as NOT_LEADER_OR_FOLLOWER or
    COORDINATOR_NOT_AVAILABLE, while a new client succeeds at once. So every failure the cluster may
    recover from retires the client. Failures a new client would repeat (a missing topic, refused
    credentials, authorization, TLS, unreadable Secrets) keep it: rebuilding would only add connections.
    """
    return type(error) in (LagReadError, KafkaUnreachable)


def connection_failure_reason(code: int | None, text: str) -> str | None:
    """The condition reason of a client error that names why no connection works, else None (pure).

    A refused SASL login, a broker certificate the client cannot verify with the configured CA, and a
    TLS handshake that fails otherwise (the broker refused the client certificate, a protocol mismatch).
    """
    if code in _AUTHENTICATION:
        return REASON_AUTHENTICATION_FAILED
    lowered = text.lower()
    if code == KafkaError._SSL:
        if any(words in lowered for words in _VERIFY_FAILED_WORDS):
            return REASON_TLS_VERIFICATION_FAILED
        return REASON_TLS_HANDSHAKE_FAILED
    if code == KafkaError._TRANSPORT and any(words in lowered for words in _TLS_ALERT_WORDS):
        return REASON_TLS_HANDSHAKE_FAILED
    return None


def connection_failure(reason: str, detail: str, what: str, bootstrap: str) -> LagReadError:
    """The typed error for a `connection_failure_reason`; the message says what to check (pure)."""
    if reason == REASON_AUTHENTICATION_FAILED:
        return KafkaAuthenticationFailed(f"{what}: Kafka at {bootstrap} refused the login ({detail}); "
                                         "check the Secrets named in spec.kafka.security and the SASL mechanism")
    if reason == REASON_TLS_VERIFICATION_FAILED:
        return KafkaTlsVerificationFailed(
            f"{what}: TLS verification of the broker certificate at {bootstrap} failed ({detail}); check that "
            "spec.kafka.security.tls.caSecretRef names the CA that signed the brokers' certificates")
    return KafkaTlsHandshakeFailed(
        f"{what}: the TLS handshake with Kafka at {bootstrap} failed ({detail}); check the protocol "
        "(SSL/SASL_SSL against a TLS listener) and, for mutual TLS, that the brokers trust the client "
        "certificate in spec.kafka.security.tls.certSecretRef")


def translate_error(exc: BaseException, what: str, bootstrap: str, admin: AdminClient) -> LagReadError:
    """The typed error for a failed admin call; `what` says what was being read."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    code = error.code() if isinstance(error, KafkaError) else None
    text = error.str() if isinstance(error, KafkaError) else str(exc)
    admin.poll(0)  # serve queued error callbacks (the login or handshake failure) before looking
    for candidate in (error, _last_client_error.get(id(admin))):
        if isinstance(candidate, KafkaError):
            reason = connection_failure_reason(candidate.code(), candidate.str())
            if reason is not None:
                return connection_failure(reason, candidate.str(), what, bootstrap)
    if code in _AUTHORIZATION:
        return KafkaAuthorizationFailed(f"{what}: not authorized ({text}); grant the operator's Kafka principal "
                                        "Describe on the topics and the group")
    if code in _UNREACHABLE or isinstance(exc, TimeoutError):
        return KafkaUnreachable(f"{what}: Kafka at {bootstrap} did not answer ({text}); check bootstrapServers, "
                                "the network path from the operator and the brokers' health")
    return LagReadError(f"{what}: {text}")


def forget_client_errors(admin: AdminClient) -> None:
    """A read with `admin` worked: the login or handshake errors it saw before are history."""
    _last_client_error.pop(id(admin), None)


def count_requests(bootstrap: str, request: str, calls: int = 1) -> None:
    """Count admin calls per cluster (`lagpilot_kafka_admin_requests_total`); `bootstrap` names the cluster
    (never the credentials). One call may be several requests on the wire: librdkafka sends one per
    partition leader (ListOffsets) or group coordinator (OffsetFetch, DescribeGroups)."""
    metrics.KAFKA_ADMIN_REQUESTS.labels(bootstrap, request).inc(calls)


def _topic_partitions(admin: AdminClient, bootstrap: str, topics: list[str], timeout: float) -> list[TopicPartition]:
    """Every partition of `topics`, from one metadata call; TopicMissing names a topic that does not exist."""
    try:
        count_requests(bootstrap, "metadata")
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise translate_error(exc, "reading cluster metadata", bootstrap, admin) from exc
    partitions: list[TopicPartition] = []
    for topic in topics:
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise TopicMissing(f"topic {topic} does not exist in the cluster at {bootstrap}; create it or fix "
                               "spec.topics")
        partitions += [TopicPartition(topic, p) for p in sorted(found.partitions)]
    return partitions


class LogOffsets:
    """The answer to one ListOffsets call for many partitions (log end or log start), awaited by `collect`."""

    def __init__(self, partitions: list[TopicPartition], request: concurrent.futures.Future[Any] | None = None,
                 futures: Mapping[TopicPartition, concurrent.futures.Future[Any]] | None = None,
                 keys: list[PartitionKey] | None = None) -> None:
        self._partitions = partitions
        self._keys = keys if keys is not None else [(tp.topic, tp.partition) for tp in partitions]
        """(topic, partition) of each partition asked, in order."""
        self._request = request
        """confluent-kafka's own future for the whole call: {TopicPartition: result or KafkaError}."""
        self._futures = futures
        """Or, from the public `list_offsets`, a future per partition."""

    def collect(self, timeout: float) -> dict[PartitionKey, int | KafkaException | TimeoutError]:
        """Per partition, in the order asked: its offset, or why it has none."""
        offsets, failures = self.split(timeout)
        if not failures:
            return dict(offsets)
        return {key: failures[key] if key in failures else offsets[key] for key in self._keys}

    def split(self, timeout: float,
              ) -> tuple[dict[PartitionKey, int], dict[PartitionKey, KafkaException | TimeoutError]]:
        """The offsets of the partitions that have one, and why the others have none, each in the order asked."""
        keys = self._keys
        if self._futures is not None:
            offsets: dict[PartitionKey, int] = {}
            failures: dict[PartitionKey, KafkaException | TimeoutError] = {}
            for tp, key in zip(self._partitions, keys, strict=True):
                try:
                    offsets[key] = int(self._futures[tp].result(timeout=timeout).offset)
                except (KafkaException, TimeoutError) as exc:
                    failures[key] = exc
            return offsets, failures
        assert self._request is not None
        try:
            results = self._request.result(timeout=timeout)
        except (KafkaException, TimeoutError) as exc:  # the whole call failed: every partition did
            return {}, dict.fromkeys(keys, exc)
        # Looked up by the partitions asked: a TopicPartition hashes and compares by topic and partition.
        try:
            values = [results[tp] for tp in self._partitions]
        except KeyError:
            values = []
        if len(results) != len(keys) or len(values) != len(keys):
            raise RuntimeError(f"ListOffsets answered {len(results)} partitions of the {len(keys)} asked")
        offsets = {key: int(value.offset) for key, value in zip(keys, values, strict=True)
                   if not isinstance(value, KafkaError)}
        if len(offsets) == len(keys):
            return offsets, {}
        return offsets, {key: KafkaException(value) for key, value in zip(keys, values, strict=True)
                         if isinstance(value, KafkaError)}


class OffsetRequests:
    """The ListOffsets requests of the last read through this object (one TopicPartition per partition and
    offset kind), made again only when a read asks for other partitions, and each topic's TopicPartitions.
    A cluster's reads ask for the same partitions poll after poll, and making 2,000 TopicPartitions was a
    third of a 1,000-partition read's CPU; the client only reads them."""

    def __init__(self) -> None:
        self._last: tuple[list[PartitionKey], dict[int, list[TopicPartition]]] | None = None
        self._topics: dict[str, tuple[tuple[int, ...], list[TopicPartition]]] = {}

    def of_topic(self, topic: str, partitions: tuple[int, ...]) -> list[TopicPartition]:
        """A TopicPartition (no offset) for each of `topic`'s `partitions`, made again only when they change: the
        per-topic lists a read builds its requests from (the committed offsets' per group among them)."""
        known = self._topics.get(topic)
        if known is None or known[0] != partitions:
            known = self._topics[topic] = (partitions, [TopicPartition(topic, p) for p in partitions])
        return known[1]

    def keep_only(self, topics: Iterable[str]) -> None:
        """Forget the topics no longer read."""
        wanted = set(topics)
        for topic in [t for t in self._topics if t not in wanted]:
            del self._topics[topic]

    def request(self, keys: list[PartitionKey], value: int) -> list[TopicPartition]:
        """A TopicPartition carrying `value` (the offset kind asked) for each of `keys`, in order."""
        last = self._last
        if last is None or last[0] != keys:
            last = self._last = (keys, {})
        found = last[1].get(value)
        if found is None:
            found = last[1][value] = [TopicPartition(topic, partition, value) for topic, partition in keys]
        return found


def _list_offsets(admin: AdminClient, partitions: list[TopicPartition], keys: list[PartitionKey], spec: Any,
                  timeout: float, requests: OffsetRequests | None = None) -> LogOffsets:
    """Send one ListOffsets call for `partitions` (`spec`: OffsetSpec.latest() or earliest()).

    Through the client's C method with one future for the whole call when it is there (confluent-kafka
    2.x): the public `list_offsets` checks every partition in Python, makes a future (a lock and a
    condition) per partition and fans the answer out to them, most of a 1,000-partition read's CPU.
    """
    send = getattr(_AdminClientImpl, "list_offsets", None)
    if send is None or not isinstance(admin, AdminClient):
        return LogOffsets(partitions, futures=admin.list_offsets(dict.fromkeys(partitions, spec),
                                                                 request_timeout=timeout), keys=keys)
    request: concurrent.futures.Future[Any] = concurrent.futures.Future()
    request.set_running_or_notify_cancel()
    value = int(spec._value)
    asked = requests.request(keys, value) if requests is not None else \
        [TopicPartition(topic, partition, value) for topic, partition in keys]
    send(admin, asked, request, request_timeout=timeout)
    return LogOffsets(partitions, request=request, keys=keys)


def send_log_offset_requests(admin: AdminClient, bootstrap: str, partitions: list[TopicPartition], timeout: float,
                             requests: OffsetRequests | None = None) -> tuple[LogOffsets, LogOffsets]:
    """Send the ListOffsets calls for the log end and start of every partition at once: (ends, starts).
    Sent first, collected later, so a reader can have its other requests in flight meanwhile. With `requests`,
    the requests of its last read are sent again when they ask for the same partitions."""
    keys = [(tp.topic, tp.partition) for tp in partitions]  # once for both calls
    return (send_offset_requests(admin, bootstrap, partitions, "latest", timeout, requests, keys),
            send_offset_requests(admin, bootstrap, partitions, "earliest", timeout, requests, keys))


def send_offset_requests(admin: AdminClient, bootstrap: str, partitions: list[TopicPartition],
                         kind: Literal["latest", "earliest"], timeout: float, requests: OffsetRequests | None = None,
                         keys: list[PartitionKey] | None = None) -> LogOffsets:
    """Send one ListOffsets call for the log end ("latest") or start ("earliest") of `partitions`."""
    if not partitions:
        return LogOffsets([], futures={})
    spec = OffsetSpec.latest() if kind == "latest" else OffsetSpec.earliest()  # type: ignore[no-untyped-call]
    count_requests(bootstrap, "list_offsets")
    keys = keys if keys is not None else [(tp.topic, tp.partition) for tp in partitions]
    return _list_offsets(admin, partitions, keys, spec, timeout, requests)


def _ask_log_offsets(admin: AdminClient, bootstrap: str, partitions: list[TopicPartition], timeout: float,
                     ) -> Callable[[], dict[PartitionKey, tuple[int, int]]]:
    """Send the ListOffsets requests for the log start and end of `partitions`; the returned call waits for
    the answers: (log-start, log-end) per partition (raises the first partition's failure)."""
    end_answers, start_answers = send_log_offset_requests(admin, bootstrap, partitions, timeout)

    def answers() -> dict[PartitionKey, tuple[int, int]]:
        found: list[dict[PartitionKey, int]] = []
        for request in (end_answers, start_answers):
            offsets, failures = request.split(timeout)
            for failure in failures.values():
                raise failure  # the first partition's, in the order asked
            found.append(offsets)
        ends, starts = found
        return {key: (max(0, starts[key]), max(0, ends[key])) for key in ends}

    return answers


def read_log_offsets(admin: AdminClient, bootstrap: str, topics: list[str], timeout: float = 10.0,
                     ) -> dict[PartitionKey, tuple[int, int]]:
    """(log-start, log-end) offset of every partition of `topics`, for readers that get the group's side
    elsewhere (share groups: `share_lag`)."""
    partitions = _topic_partitions(admin, bootstrap, topics, timeout)
    try:
        log_offsets = _ask_log_offsets(admin, bootstrap, partitions, timeout)()
    except (KafkaException, TimeoutError) as exc:
        raise translate_error(exc, f"reading the offsets of topics {', '.join(topics)}", bootstrap, admin) from exc
    forget_client_errors(admin)
    return log_offsets


def read_lag(admin: AdminClient, bootstrap: str, group_id: str, topics: list[str], timeout: float = 10.0) -> LagSample:
    """One sample of the group's committed offsets and the topics' start and end offsets."""
    sampled_at = time.time()
    partitions = _topic_partitions(admin, bootstrap, topics, timeout)
    try:
        count_requests(bootstrap, "offset_fetch")
        count_requests(bootstrap, "describe_groups")
        committed_future = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group_id, partitions)], request_timeout=timeout)[group_id]
        log_offsets_answers = _ask_log_offsets(admin, bootstrap, partitions, timeout)
        group_future = admin.describe_consumer_groups([group_id], request_timeout=timeout)[group_id]
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in committed_future.result(timeout=timeout).topic_partitions}
        log_offsets = log_offsets_answers()
        group = group_future.result(timeout=timeout)
    except (KafkaException, TimeoutError) as exc:
        raise translate_error(exc, f"reading offsets of group {group_id}", bootstrap, admin) from exc
    forget_client_errors(admin)
    offsets = tuple(
        PartitionOffsets(
            topic=tp.topic,
            partition=tp.partition,
            end_offset=log_offsets[(tp.topic, tp.partition)][1],
            # librdkafka reports "no committed offset" as a negative logical offset (-1001).
            committed=c if (c := committed.get((tp.topic, tp.partition), -1)) >= 0 else None,
            start_offset=log_offsets[(tp.topic, tp.partition)][0],
        )
        for tp in partitions
    )
    return LagSample(time=sampled_at, partitions=offsets, members=len(group.members),
                     protocol=group_protocol(group.type))


def group_protocol(group_type: object) -> GroupProtocol | None:
    """The rebalance protocol of a described group: `classic`, `consumer` (KIP-848), or unknown."""
    if group_type == ConsumerGroupType.CONSUMER:
        return "consumer"
    if group_type == ConsumerGroupType.CLASSIC:
        return "classic"
    return None
