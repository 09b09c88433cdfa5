"""A small typed etcd v3 client: the only module of the project that imports `pyetcd`.

Everything above this module sees our own frozen dataclasses (`KeyValue`,
`TxnResult`, `WatchEvent`) and our own errors (`EtcdError`, `EtcdUnavailable`),
so the underlying client library can be swapped by rewriting this file alone.

Unary calls go straight to the generated gRPC stubs (`pyetcd.etcdrpc`) rather
than through pyetcd's convenience methods, for three reasons found on pyetcd
0.0.7: its `transaction()` drops the response header (so no commit revision),
every call shares one client-wide timeout (a lease keep-alive needs a shorter
one), and its default endpoint is marked "failed" for 300 s after a single
timeout, during which every call raises `ValueError('Trying to use a failed
node')`. Watches do use pyetcd's watcher thread, which is sound.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import events as pyetcd_events
from pyetcd import exceptions as pyetcd_exceptions

from resilience._errors import EtcdError, EtcdUnavailable, InvalidEndpoint

__all__ = [
    "Compare",
    "Delete",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "Get",
    "InvalidEndpoint",
    "KeyValue",
    "LeaseGrant",
    "Put",
    "TxnOp",
    "TxnResult",
    "WatchEvent",
    "WatchHandle",
    "parse_endpoints",
]

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0

# grpc backs off up to 120 s between reconnects to a dead server by default; a
# restarted etcd member must be usable again within half a second. (Not
# `min_reconnect_backoff_ms`: despite its name it is the connect timeout.)
_GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]

# Codes that mean "this endpoint did not answer", as opposed to "etcd refused".
_UNAVAILABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


@dataclass(frozen=True)
class KeyValue:
    """One key as stored in etcd. Revisions are etcd's global revision numbers."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class LeaseGrant:
    """A lease etcd granted: `ttl_s` may exceed the request (etcd has a minimum TTL)."""

    lease_id: int
    ttl_s: int


CompareTarget = Literal["value", "version", "create_revision", "mod_revision", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]

_TARGETS: dict[str, int] = {
    "value": etcdrpc.Compare.VALUE,
    "version": etcdrpc.Compare.VERSION,
    "create_revision": etcdrpc.Compare.CREATE,
    "mod_revision": etcdrpc.Compare.MOD,
    "lease": etcdrpc.Compare.LEASE,
}
_OPS: dict[str, int] = {
    "==": etcdrpc.Compare.EQUAL,
    "!=": etcdrpc.Compare.NOT_EQUAL,
    "<": etcdrpc.Compare.LESS,
    ">": etcdrpc.Compare.GREATER,
}


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction, e.g. `Compare.mod_revision("/k", 7)`.

    A key that does not exist compares as revision/version/lease 0; a value
    compare on a missing key is always false.
    """

    key: str
    target: CompareTarget
    operand: bytes | int
    op: CompareOp = "=="

    def __post_init__(self) -> None:
        if self.target not in _TARGETS:
            raise EtcdError(f"unknown compare target {self.target!r}")
        if self.op not in _OPS:
            raise EtcdError(f"unknown compare operator {self.op!r}")
        wants_bytes = self.target == "value"
        if wants_bytes != isinstance(self.operand, bytes) or isinstance(self.operand, bool):
            kind = "bytes" if wants_bytes else "an int"
            raise EtcdError(f"compare on {self.target} of {self.key!r} needs {kind} operand")

    @classmethod
    def value(cls, key: str, value: bytes, op: CompareOp = "==") -> Compare:
        return cls(key, "value", value, op)

    @classmethod
    def version(cls, key: str, version: int, op: CompareOp = "==") -> Compare:
        return cls(key, "version", version, op)

    @classmethod
    def create_revision(cls, key: str, revision: int, op: CompareOp = "==") -> Compare:
        return cls(key, "create_revision", revision, op)

    @classmethod
    def mod_revision(cls, key: str, revision: int, op: CompareOp = "==") -> Compare:
        return cls(key, "mod_revision", revision, op)

    @classmethod
    def lease(cls, key: str, lease_id: int, op: CompareOp = "==") -> Compare:
        return cls(key, "lease", lease_id, op)


@dataclass(frozen=True)
class Put:
    """Write `value` at `key`, attached to `lease` when non-zero."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    """Delete `key`, or every key starting with it when `prefix`."""

    key: str
    prefix: bool = False


@dataclass(frozen=True)
class Get:
    """Read `key`, or every key starting with it when `prefix`, inside a transaction."""

    key: str
    prefix: bool = False


TxnOp = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    """Outcome of a transaction.

    `revision` is the store revision after the transaction (the commit revision
    when it wrote). `reads` has one tuple of `KeyValue` per `Get` of the branch
    that ran, in order.
    """

    succeeded: bool
    revision: int
    reads: tuple[tuple[KeyValue, ...], ...]


@dataclass(frozen=True)
class WatchEvent:
    """A change seen by a watch. For a delete, `kv.value` is empty and `kv.mod_revision`
    is the revision of the delete."""

    kind: Literal["put", "delete"]
    kv: KeyValue

    @property
    def key(self) -> str:
        return self.kv.key


class WatchHandle:
    """Cancels a watch. `cancel()` is idempotent and never raises."""

    def __init__(self, client: EtcdClient, watch_id: int) -> None:
        self._client = client
        self._watch_id = watch_id
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        self._client._cancel_watch(self._watch_id)


def parse_endpoints(endpoints: str | Sequence[str]) -> tuple[str, ...]:
    """Parse "host:port[,host:port...]" (an `http://` scheme is allowed) into "host:port" strings.

    Raises `InvalidEndpoint` naming the bad part. TLS (`https://`) is not supported.
    """
    parts = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed: list[str] = []
    for raw in parts:
        text = raw.strip()
        if text.startswith("https://"):
            raise InvalidEndpoint(f"etcd endpoint {raw!r}: TLS (https) is not supported")
        text = text.removeprefix("http://").rstrip("/")
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidEndpoint(f"etcd endpoint {raw!r} is not host:port (e.g. 127.0.0.1:2379)")
        parsed.append(f"{host}:{int(port_text)}")
    if not parsed:
        raise InvalidEndpoint("no etcd endpoint given")
    return tuple(parsed)


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        key=bytes(raw.key).decode("utf-8", errors="surrogateescape"),
        value=bytes(raw.value),
        create_revision=int(raw.create_revision),
        mod_revision=int(raw.mod_revision),
        version=int(raw.version),
        lease=int(raw.lease),
    )


def _range_end(key: bytes) -> bytes:
    """The first key after every key starting with `key` (etcd's prefix convention)."""
    end = bytearray(key)
    for index in reversed(range(len(end))):
        if end[index] < 0xFF:
            end[index] += 1
            return bytes(end[: index + 1])
    return b"\0"  # the prefix is all 0xff bytes: to the end of the keyspace


def _compare_message(compare: Compare) -> Any:
    message = etcdrpc.Compare(
        key=compare.key.encode(), target=_TARGETS[compare.target], result=_OPS[compare.op]
    )
    setattr(message, compare.target, compare.operand)
    return message


def _range_request(key: str, *, prefix: bool) -> Any:
    raw = key.encode()
    if prefix:
        return etcdrpc.RangeRequest(key=raw, range_end=_range_end(raw))
    return etcdrpc.RangeRequest(key=raw)


def _request_op(op: TxnOp) -> Any:
    if isinstance(op, Put):
        put = etcdrpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease)
        return etcdrpc.RequestOp(request_put=put)
    if isinstance(op, Delete):
        raw = op.key.encode()
        range_end = _range_end(raw) if op.prefix else b""
        delete = etcdrpc.DeleteRangeRequest(key=raw, range_end=range_end)
        return etcdrpc.RequestOp(request_delete_range=delete)
    return etcdrpc.RequestOp(request_range=_range_request(op.key, prefix=op.prefix))


class EtcdClient:
    """A connection to one etcd cluster through one or more client endpoints.

    Construction does not contact etcd; `ping()` does (`connect()` does both).
    Every call waits up to the timeout for an answer, riding through a
    reconnect, then raises `EtcdUnavailable`; it raises `EtcdError` when etcd
    refuses it. With several endpoints, a
    failed endpoint is skipped for a second and the next call goes to another;
    calls are not retried automatically (a retried write could apply twice).
    Thread-safe. Watch callbacks run on one shared internal thread: keep them short.
    """

    def __init__(self, endpoints: str | Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S):
        if not timeout_s > 0:
            raise EtcdError(f"etcd client timeout must be positive, got {timeout_s!r}")
        self._endpoints = parse_endpoints(endpoints)
        self._timeout_s = float(timeout_s)
        # A single endpoint is never put aside (time_retry=0): there is nowhere else to go.
        time_retry = 0.0 if len(self._endpoints) == 1 else 1.0
        pyetcd_endpoints = []
        for netloc in self._endpoints:
            host, _, port = netloc.rpartition(":")
            pyetcd_endpoints.append(
                pyetcd.Endpoint(
                    host, int(port), secure=False, time_retry=time_retry, opts=_GRPC_OPTIONS
                )
            )
        self._client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=pyetcd_endpoints, timeout=self._timeout_s, failover=True
        )
        self._lock = threading.Lock()
        self._stubs: dict[str, tuple[Any, Any]] = {}
        self._closed = False

    @classmethod
    def connect(
        cls, endpoints: str | Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> EtcdClient:
        """Create a client and check that etcd answers; raises `EtcdUnavailable` if not."""
        client = cls(endpoints, timeout_s=timeout_s)
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
        return client

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._endpoints

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    def __repr__(self) -> str:
        return f"EtcdClient({','.join(self._endpoints)!r})"

    # -- plumbing ---------------------------------------------------------------

    def _endpoint_in_use(self) -> str:
        endpoint = self._client.endpoint_in_use
        return str(endpoint.netloc) if endpoint is not None else ",".join(self._endpoints)

    def _stub(self, service: str) -> Any:
        # `channel` performs pyetcd's failover choice; stubs are rebuilt when it changes.
        channel = self._client.channel
        with self._lock:
            cached = self._stubs.get(service)
            if cached is not None and cached[0] is channel:
                return cached[1]
            stub = getattr(etcdrpc, f"{service}Stub")(channel)
            self._stubs[service] = (channel, stub)
            return stub

    def _unavailable(self, reason: str) -> EtcdUnavailable:
        return EtcdUnavailable(self._endpoint_in_use(), reason)

    def _translate(self, exc: BaseException, what: str) -> EtcdError:
        if isinstance(exc, grpc.RpcError):
            code = exc.code()
            details = " ".join(str(exc.details() or "").split())
            if code in _UNAVAILABLE_CODES:
                # Put this endpoint aside so the next call tries another one.
                endpoint = self._client.endpoint_in_use
                if endpoint is not None:
                    endpoint.fail()
                return self._unavailable(f"{what}: {code.name.lower()} ({details})")
            return EtcdError(f"etcd refused {what}: {details or code.name}")
        if isinstance(exc, pyetcd_exceptions.WatchTimedOut):
            return self._unavailable(f"{what}: no answer within {self._timeout_s:g} s")
        if isinstance(exc, pyetcd_exceptions.RevisionCompactedError):
            return EtcdError(
                f"{what}: revision already compacted (oldest kept: {exc.compacted_revision})"
            )
        return self._unavailable(f"{what}: {type(exc).__name__} {exc}".strip())

    def _unary(
        self, service: str, method: str, request: Any, timeout_s: float | None = None
    ) -> Any:
        if self._closed:
            raise EtcdError(f"{self!r} is closed")
        timeout = self._timeout_s if timeout_s is None else timeout_s
        try:
            stub = self._stub(service)
            # wait_for_ready: a call made while the channel reconnects waits for
            # it (within the timeout) instead of failing at once.
            return getattr(stub, method)(
                request,
                timeout,
                credentials=self._client.call_credentials,
                metadata=self._client.metadata,
                wait_for_ready=True,
            )
        except (grpc.RpcError, pyetcd_exceptions.Etcd3Exception) as exc:
            raise self._translate(exc, method) from exc

    # -- keys -------------------------------------------------------------------

    def ping(self) -> int:
        """Return the current store revision; raises `EtcdUnavailable` if etcd does not answer."""
        response = self._unary("KV", "Range", etcdrpc.RangeRequest(key=b"\0", count_only=True))
        return int(response.header.revision)

    def get(self, key: str, *, timeout_s: float | None = None) -> KeyValue | None:
        """Linearizable read of one key; None when absent. `timeout_s` bounds this call."""
        response = self._unary("KV", "Range", _range_request(key, prefix=False), timeout_s)
        return _kv(response.kvs[0]) if response.kvs else None

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        """Every key starting with `prefix`, sorted by key."""
        response = self._unary("KV", "Range", _range_request(prefix, prefix=True))
        return [_kv(raw) for raw in response.kvs]

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write `value` at `key` and return the new revision."""
        request = etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease)
        return int(self._unary("KV", "Put", request).header.revision)

    def delete(self, key: str) -> bool:
        """Delete one key; True if it existed."""
        request = etcdrpc.DeleteRangeRequest(key=key.encode())
        return int(self._unary("KV", "DeleteRange", request).deleted) > 0

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix`; return how many there were."""
        raw = prefix.encode()
        request = etcdrpc.DeleteRangeRequest(key=raw, range_end=_range_end(raw))
        return int(self._unary("KV", "DeleteRange", request).deleted)

    def transaction(
        self,
        compares: Iterable[Compare],
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
    ) -> TxnResult:
        """Run `success` if every compare holds, else `failure`, atomically.

        A key may be written at most once per branch (etcd refuses duplicates).
        """
        request = etcdrpc.TxnRequest(
            compare=[_compare_message(compare) for compare in compares],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure],
        )
        response = self._unary("KV", "Txn", request)
        reads = tuple(
            tuple(_kv(raw) for raw in op.response_range.kvs)
            for op in response.responses
            if op.WhichOneof("response") == "response_range"
        )
        return TxnResult(bool(response.succeeded), int(response.header.revision), reads)

    # -- leases -----------------------------------------------------------------

    def grant_lease(self, ttl_s: int) -> LeaseGrant:
        """Grant a lease of at least `ttl_s` whole seconds (etcd may round up)."""
        if ttl_s < 1:
            raise EtcdError(f"a lease TTL is a whole number of seconds >= 1, got {ttl_s!r}")
        response = self._unary("Lease", "LeaseGrant", etcdrpc.LeaseGrantRequest(TTL=ttl_s))
        if response.error:
            raise EtcdError(f"etcd refused the lease: {response.error}")
        return LeaseGrant(int(response.ID), int(response.TTL))

    def keepalive_once(self, lease_id: int, *, timeout_s: float | None = None) -> int:
        """Refresh a lease once; return its new TTL in seconds, 0 when the lease is gone.

        `timeout_s` bounds this call alone, so a keep-alive loop never blocks past
        its own deadline.
        """
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
        timeout = self._timeout_s if timeout_s is None else timeout_s
        if self._closed:
            raise EtcdError(f"{self!r} is closed")
        try:
            stub = self._stub("Lease")
            stream = stub.LeaseKeepAlive(
                iter([request]),
                timeout,
                credentials=self._client.call_credentials,
                metadata=self._client.metadata,
                wait_for_ready=True,
            )
            try:
                for response in stream:
                    return max(0, int(response.TTL))
            finally:
                stream.cancel()
        except (grpc.RpcError, pyetcd_exceptions.Etcd3Exception) as exc:
            raise self._translate(exc, "LeaseKeepAlive") from exc
        raise self._unavailable("LeaseKeepAlive: the stream closed without an answer")

    def revoke_lease(self, lease_id: int, *, timeout_s: float | None = None) -> bool:
        """Revoke a lease (its keys are deleted); False if it was already gone."""
        try:
            self._unary("Lease", "LeaseRevoke", etcdrpc.LeaseRevokeRequest(ID=lease_id), timeout_s)
        except EtcdError as exc:
            cause = exc.__cause__
            if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def lease_time_to_live(self, lease_id: int) -> int:
        """Remaining TTL of a lease in seconds as etcd sees it; -1 when the lease is gone."""
        response = self._unary(
            "Lease", "LeaseTimeToLive", etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        )
        return int(response.TTL)

    # -- watches ----------------------------------------------------------------

    def watch_prefix(
        self,
        prefix: str,
        callback: Callable[[WatchEvent], None],
        *,
        start_revision: int | None = None,
        on_error: Callable[[EtcdError], None] | None = None,
    ) -> WatchHandle:
        """Call `callback` for every put and delete under `prefix`, in revision order.

        Events start after the current revision, or at `start_revision` (to
        resume without a gap). If the stream breaks (etcd restarted, client
        closed) the watch ends and `on_error` is called once; it is not resumed.
        """
        return self._watch(
            prefix, callback, prefix=True, start_revision=start_revision, on_error=on_error
        )

    def watch_key(
        self,
        key: str,
        callback: Callable[[WatchEvent], None],
        *,
        start_revision: int | None = None,
        on_error: Callable[[EtcdError], None] | None = None,
    ) -> WatchHandle:
        """Like `watch_prefix`, for exactly one key."""
        return self._watch(
            key, callback, prefix=False, start_revision=start_revision, on_error=on_error
        )

    def _watch(
        self,
        key: str,
        callback: Callable[[WatchEvent], None],
        *,
        prefix: bool,
        start_revision: int | None,
        on_error: Callable[[EtcdError], None] | None,
    ) -> WatchHandle:
        if self._closed:
            raise EtcdError(f"{self!r} is closed")
        handle_box: list[WatchHandle] = []
        ended = threading.Event()

        def deliver(response: Any) -> None:
            handle = handle_box[0] if handle_box else None
            if handle is not None and handle.cancelled:
                return
            if response is None or isinstance(response, BaseException):
                # pyetcd passes None when the stream closes, the error when it breaks.
                if ended.is_set() or self._closed:
                    return
                ended.set()
                if on_error is not None:
                    error = (
                        self._unavailable("watch stream closed")
                        if response is None
                        else self._translate(response, "Watch")
                    )
                    _call_safely(on_error, error)
                return
            for event in response.events:
                kind: Literal["put", "delete"] = (
                    "delete" if isinstance(event, pyetcd_events.DeleteEvent) else "put"
                )
                # pyetcd events proxy the raw KeyValue's fields as attributes.
                _call_safely(callback, WatchEvent(kind, _kv(event)))

        kwargs: dict[str, Any] = {}
        if prefix:
            kwargs["range_end"] = _range_end(key.encode())
        if start_revision is not None:
            kwargs["start_revision"] = start_revision
        try:
            watch_id = self._client.add_watch_callback(key.encode(), deliver, **kwargs)
        except (grpc.RpcError, pyetcd_exceptions.Etcd3Exception, ValueError) as exc:
            raise self._translate(exc, "Watch") from exc
        handle = WatchHandle(self, int(watch_id))
        handle_box.append(handle)
        return handle

    def _cancel_watch(self, watch_id: int) -> None:
        if self._closed:
            return
        try:
            self._client.cancel_watch(watch_id)
        except Exception:  # noqa: BLE001 - cancelling is best effort; a dead stream has no watch
            _log.debug("cancelling etcd watch %s failed", watch_id, exc_info=True)

    # -- lifecycle --------------------------------------------------------------

    def close(self) -> None:
        """Close the connections and end every watch. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._client.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _call_safely(callback: Callable[[Any], None], argument: Any) -> None:
    try:
        callback(argument)
    except Exception:  # noqa: BLE001 - a failing callback must not kill the shared watch thread
        _log.exception("etcd watch callback %r failed", callback)
