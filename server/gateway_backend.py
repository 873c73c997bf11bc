"""The Python side of the native front end's batches (server/frontend.py, gateway/).

`GatewayBackend.handle` answers each item of a SampleBatchRequest as GeneratorService would (the same
checks, latents, replies, statuses and metrics, by the same code), but checks all items first and runs each
model version's rows in one generator call beside the batcher's queue, so the Python cost of one
single-sample call drops from a whole gRPC call (~0.3 ms under the GIL) to parsing, checking and encoding it
(~60 us). Several batches run at once (one per gateway connection), each ONNX Runtime call on its own thread.

`BatchSocket` carries them: a Unix socket in the front end's private folder (0700), which also refuses a
connection from another user id (SO_PEERCRED; the gateway checks this server's the same way), one thread per
gateway connection, each message a 4-byte big-endian length then the serialized message (SampleBatchRequest in,
SampleBatchResponse out). Not gRPC: a Python gRPC server added ~3 ms of GIL-bound hand-offs to every batch.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time

import grpc
from google.protobuf.message import DecodeError

from protos.internal import gateway_pb2 as gw
from protos.ganserve.v1 import generator_pb2 as pb
from server import engine
from server.batcher import coalesce
from server.engine import Call
from server.errors import InvalidArgument, to_rpc_status
from server.limits import SERVICE, RequestChecks
from server.service import CallState, GeneratorService, SampleJob, chosen_error, record_call

log = logging.getLogger("ganserve.gateway")
_METHODS = {"Sample": (pb.SampleRequest, False), "SampleConditional": (pb.SampleConditionalRequest, True)}


class _ItemState(CallState):
    """The per-call state of one batch item: its own deadline, the batch call's liveness."""

    def __init__(self, timeout_us: int, is_active):  # noqa: D107 - no super(): there is no per-item context
        deadline = time.monotonic() + timeout_us / 1e6 if timeout_us > 0 else None
        self.call = Call(deadline=deadline, is_active=is_active)
        self.model = ""


def _always() -> bool:
    return True


class GatewayBackend:
    """Many Sample/SampleConditional calls, answered one by one, computed together."""

    def __init__(self, service: GeneratorService):
        self.service = service
        self.checks = RequestChecks(service.config)  # each item's request as a call's (server/limits.py)

    def handle(self, request: gw.SampleBatchRequest) -> gw.SampleBatchResponse:
        t0 = time.perf_counter()
        items = list(request.items)
        results: list[gw.BatchResult | None] = [None] * len(items)
        codes = [grpc.StatusCode.OK] * len(items)
        # (a client that goes away is the gateway's to notice: it answers it and drops the item's reply)
        rpcs = [_ItemState(item.timeout_us, _always) for item in items]
        groups: dict[int, list[tuple[int, SampleJob]]] = {}  # by model version: one generator call each
        for i, item in enumerate(items):
            try:
                job = self._prepare(item, rpcs[i])
            except Exception as e:  # noqa: BLE001 - every failure becomes that item's status
                results[i], codes[i] = self._failure(item.method, e)
                continue
            groups.setdefault(id(job.model), []).append((i, job))
        for members in groups.values():
            self._run(members, rpcs, results, codes, [items[i].method for i, _ in members])
        for item, rpc, code in zip(items, rpcs, codes):  # counted and timed as the call they are
            record_call(self.service.telemetry, item.method if item.method in _METHODS else "SampleBatch", rpc, code, t0)
        return gw.SampleBatchResponse(results=results)

    def _prepare(self, item, rpc: _ItemState) -> SampleJob:
        if item.method not in _METHODS:
            raise InvalidArgument(f"the gateway batches Sample and SampleConditional, not {item.method!r}", "method")
        kind, conditional = _METHODS[item.method]
        refused = self.checks.problem(item.request, kind.DESCRIPTOR, f"/{SERVICE}/{item.method}")
        if refused is not None:
            raise refused
        try:
            request = kind.FromString(item.request)
        except DecodeError as e:
            raise InvalidArgument(f"not a serialized {kind.DESCRIPTOR.name}: {e}", "request") from e
        job = self.service.prepare_sample(request, rpc, conditional=conditional)
        rpc.call.check()  # past its deadline already: no run
        return job

    def _run(self, members, rpcs, results, codes, methods) -> None:
        """One generator call for the rows of every member (same model version), then each member's reply."""
        jobs = [job for _, job in members]
        deadlines = [rpcs[i].call.deadline for i, _ in members]
        # The run serves its longest-waiting member; a member whose own deadline passes is answered by the gateway.
        call = Call(deadline=None if None in deadlines else max(deadlines), is_active=rpcs[members[0][0]].call.is_active)
        model = jobs[0].model
        try:
            feeds, spans = coalesce([{"z": j.z, **({"y": j.y} if model.conditional else {})} for j in jobs])
            x = engine.generate_batch(model, feeds["z"], feeds.get("y"), call)
        except Exception as e:  # noqa: BLE001 - the run failed: every member gets its status
            for (i, _), method in zip(members, methods):
                results[i], codes[i] = self._failure(method, e)
            return
        clean = engine.clean_output(model, x)  # checked and clamped once for all members, not once each
        if clean is not None:
            x = clean
        for (i, job), method, span in zip(members, methods, spans):
            try:
                reply = self.service.sample_reply(job, x[span], clean=clean is not None)
                results[i] = gw.BatchResult(response=reply.SerializeToString())
            except Exception as e:  # noqa: BLE001
                results[i], codes[i] = self._failure(method, e)

    def _failure(self, method: str, err: Exception) -> tuple[gw.BatchResult, grpc.StatusCode]:
        err = chosen_error(method, err, self.service.telemetry)
        return gw.BatchResult(status=to_rpc_status(err).SerializeToString()), err.code


_HEAD = struct.Struct(">I")
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket (SO_PEERCRED), None where unknown."""
    try:
        _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except (OSError, AttributeError):  # (not Linux)
        return None
    return uid


class BatchSocket:
    """SampleBatch messages on a Unix socket (see the module docstring), one thread per connection."""

    def __init__(self, path: str, backend: GatewayBackend):
        self.path, self.backend = path, backend
        self.in_flight = 0  # batches being answered (for the batcher's "alone" test)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        os.chmod(path, 0o600)
        self._sock.listen(64)
        threading.Thread(target=self._accept, name="batch-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            uid = peer_uid(conn)
            if uid is not None and uid != os.getuid():  # a second check behind the folder's 0700
                log.warning("batch socket: refused a connection from uid %s (this server runs as %d)", uid, os.getuid())
                conn.close()
                continue
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="batch-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb", buffering=1 << 16)
        try:
            while True:
                head = reader.read(4)
                if len(head) < 4:
                    return  # the gateway closed the connection
                size, = _HEAD.unpack(head)
                body = reader.read(size)
                if len(body) < size:
                    return
                request = gw.SampleBatchRequest.FromString(body)
                with self._lock:
                    self.in_flight += 1
                try:
                    reply = self.backend.handle(request).SerializeToString()
                finally:
                    with self._lock:
                        self.in_flight -= 1
                conn.sendall(_HEAD.pack(len(reply)) + reply)
        except (OSError, DecodeError) as e:  # a dropped connection, or a message that is not a batch: close it
            log.warning("batch connection closed: %s", e)
        finally:
            reader.close()
            with self._lock:  # out of the set before it is closed: close() never sees a closed socket
                self._conns.discard(conn)
                conn.close()

    def close(self) -> None:
        self._sock.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:  # the gateway's end went away meanwhile: nothing left to wake
                    pass
