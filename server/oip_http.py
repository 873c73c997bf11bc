"""The Open Inference Protocol (KServe v2) over HTTP/REST with JSON, on its own port (`--http-port`; off by default).

    GET  /v2                                          server metadata
    GET  /v2/health/live, /v2/health/ready            200 (empty body), or 503 while loading or draining
    GET  /v2/models/{name}[/versions/{v}]             model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready       200 (empty body), or an error
    POST /v2/models/{name}[/versions/{v}]/infer       inference: JSON tensors, and the binary tensor data
                                                      extension (header Inference-Header-Content-Length) both ways

The mapping is server/oip.py's, the same as over gRPC. Errors are {"error": "<field>: <reason>"} with the
status gRPC's own HTTP mapping gives the chosen code (grpc-gateway): INVALID_ARGUMENT and FAILED_PRECONDITION
400, NOT_FOUND 404 (unknown model, version or route), RESOURCE_EXHAUSTED 429 (server busy, queue full), a
body over max_request_bytes 413, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, a missing or wrong token 401; a
500 only for a server bug (logged with its traceback). With a token configured, every route but
/v2/health/* needs `Authorization: Bearer <token>`; TLS is the gRPC port's (same certificate and client CA).

Why uvicorn (with httptools, its C parser): a well-kept ASGI server, the one KServe's own Python model
server runs its REST API on, fast at HTTP/1.1 keep-alive, with TLS and graceful shutdown built in, and small
(no web framework: the routes above are one function). It runs on a thread of this process with its own
event loop; metadata and health are answered on that loop, and each inference runs on the gRPC services'
counting pool, so v2 REST calls count against `max_concurrent_rpcs` (more are refused 429 at once) and reach
the same batchers as gRPC calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np
import uvicorn

from server import oip
from server.config import Config
from server.engine import Call
from server.errors import InvalidArgument, require
from server.interceptors import Bearer
from server.registry import Registry
from server.service import chosen_error
from server.telemetry import Telemetry

log = logging.getLogger("ganserve.http")
HEADER_LENGTH = "inference-header-content-length"
_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
           grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
           grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
           grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNAUTHENTICATED: 401}
_JSON = [(b"content-type", b"application/json")]


class HttpError(Exception):
    """A reply chosen before any model work: HTTP status, gRPC code name for the metrics, message."""

    def __init__(self, status: int, code: str, message: str, headers: list | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or []


# -- the infer body: JSON (+ binary tensor data) <-> oip inputs and outputs -----------------------------------

def _json_array(data, datatype: str, field: str) -> np.ndarray:
    """A JSON (nested) list as an array of `datatype`: integers for integer types, numbers for float types."""
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting
        raise InvalidArgument("must be a flat or nested list of numbers (row-major)", f"{field}.data") from None
    dtype = oip.NUMPY[datatype]
    kinds = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}[dtype.kind]
    require(raw.size == 0 or raw.dtype.kind in kinds, f"{field}.data",
            f"must hold {'booleans' if dtype.kind == 'b' else 'integers' if kinds == 'iu' else 'numbers'} "
            f"for {datatype}")
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        require(int(raw.min()) >= info.min and int(raw.max()) <= info.max, f"{field}.data",
                f"values out of range for {datatype}")
    return raw.astype(dtype).reshape(-1)


def decode_infer(body: bytes, header_length: str | None) -> tuple[list[oip.Input], dict, list[str], dict, str]:
    """(inputs, request parameters, requested output names, {output: binary?}, id) from an infer body."""
    binary = b""
    if header_length is not None:
        require(header_length.isdigit() and int(header_length) <= len(body), "Inference-Header-Content-Length",
                f"must be the JSON header's length in bytes, at most the body's {len(body)}, "
                f"got {header_length[:20]!r}")
        body, binary = body[:int(header_length)], body[int(header_length):]
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"malformed JSON ({e})", "body") from None
    require(isinstance(request, dict), "body", "must be a JSON object with an inputs list")
    params = request.get("parameters") or {}
    require(isinstance(params, dict), "parameters", "must be a JSON object")
    inputs, offset = [], 0
    raw_inputs = request.get("inputs")
    require(isinstance(raw_inputs, list), "inputs", "must be a list of tensors")
    for i, t in enumerate(raw_inputs):
        require(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("datatype"), str),
                f"inputs[{i}]", "must be an object with name, datatype, shape and data")
        field = t["name"][:40] or f"inputs[{i}]"
        shape, datatype = t.get("shape"), t["datatype"]
        require(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape),
                f"{field}.shape", "must be a list of integers")
        dtype = oip.NUMPY.get(datatype)
        require(dtype is not None, f"{field}.datatype", f"unknown datatype {datatype[:20]!r}")
        count = oip.element_count(shape, field)
        tparams = t.get("parameters") or {}
        require(isinstance(tparams, dict), f"{field}.parameters", "must be a JSON object")
        if "binary_data_size" in tparams:
            size = tparams["binary_data_size"]
            require(isinstance(size, int) and 0 <= size <= len(binary) - offset, f"{field}.parameters.binary_data_size",
                    f"must be the tensor's byte count within the {len(binary) - offset} binary bytes left, got {size}")
            require(size == count * dtype.itemsize, f"{field}.data",
                    f"has {size} bytes, shape {shape} of {datatype} needs {count * dtype.itemsize}")
            array = np.frombuffer(binary, dtype, count, offset)
            offset += size
        else:
            require("data" in t, f"{field}.data", "missing (give data, or binary_data_size and the bytes)")
            array = _json_array(t["data"], datatype, field)
            require(array.size == count, f"{field}.data", f"has {array.size} values, shape {shape} needs {count}")
        inputs.append(oip.Input(t["name"], datatype, array.reshape(shape)))
    require(offset == len(binary), "body", f"{len(binary) - offset} bytes of binary data belong to no input")
    outputs = request.get("outputs") or []
    require(isinstance(outputs, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                              and isinstance(o.get("parameters") or {}, dict) for o in outputs),
            "outputs", "must be a list of objects with a name (and parameters)")
    binary_out = {"*": params.get("binary_data_output", False)}
    require(isinstance(binary_out["*"], bool), "parameters.binary_data_output", "must be true or false")
    for o in outputs:
        flag = binary_out[o["name"]] = (o.get("parameters") or {}).get("binary_data", binary_out["*"])
        require(isinstance(flag, bool), f"outputs[{o['name'][:40]}].parameters.binary_data", "must be true or false")
    rid = request.get("id", "")
    require(isinstance(rid, str), "id", "must be a string")
    return inputs, params, [o["name"] for o in outputs], binary_out, rid


def encode_infer(model, outputs: list[oip.Output], binary: dict, rid: str) -> tuple[list, bytes]:
    """(headers, body): JSON, with the binary outputs' bytes after it (binary tensor data extension)."""
    reply: dict = {"model_name": model.name, "model_version": str(model.version)}
    if rid:
        reply["id"] = rid
    entries, blobs = [], []
    for out in outputs:
        entry = {"name": out.name, "datatype": out.datatype, "shape": list(out.array.shape)}
        if binary.get(out.name, binary["*"]):
            blob = out.array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = out.array.reshape(-1).tolist()
        entries.append(entry)
    reply["outputs"] = entries
    header = json.dumps(reply, separators=(",", ":")).encode()
    if not blobs:
        return _JSON, header
    return [(b"content-type", b"application/octet-stream"),
            (HEADER_LENGTH.encode(), str(len(header)).encode())], header + b"".join(blobs)


# -- the ASGI application ------------------------------------------------------------------------------------

def route(method: str, path: str) -> tuple[str, str, str]:
    """(endpoint, model name, version) for a request line; HttpError 404/405 otherwise."""
    parts = path.strip("/").split("/")
    name = version = ""
    if parts == ["v2"]:
        endpoint = "ServerMetadata"
    elif len(parts) == 3 and parts[:2] == ["v2", "health"] and parts[2] in ("live", "ready"):
        endpoint = "ServerLive" if parts[2] == "live" else "ServerReady"
    elif len(parts) >= 3 and parts[:2] == ["v2", "models"] and parts[2]:
        name, rest = parts[2], parts[3:]
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        endpoint = {(): "ModelMetadata", ("ready",): "ModelReady", ("infer",): "ModelInfer"}.get(tuple(rest), "")
    else:
        endpoint = ""
    if not endpoint:
        raise HttpError(404, "NOT_FOUND", f"no route {path[:100]!r}; see /v2, /v2/health/ready, /v2/models/<name>")
    wanted = "POST" if endpoint == "ModelInfer" else "GET"
    if method != wanted and not (wanted == "GET" and method == "HEAD"):
        raise HttpError(405, "INVALID_ARGUMENT", f"{path[:100]} takes {wanted}, not {method}",
                        [(b"allow", wanted.encode())])
    return endpoint, name, version


class RestApi:
    """The v2 REST routes as an ASGI application."""

    def __init__(self, registry: Registry, config: Config, telemetry: Telemetry, pool, ready: Callable[[], bool]):
        self.registry, self.config, self.telemetry, self.pool, self.ready = registry, config, telemetry, pool, ready
        token = config.token()
        self._bearer = Bearer(token) if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        t0, model_ref = time.perf_counter(), "-"
        endpoint, status, code, headers, body = "unrouted", 500, "INTERNAL", _JSON, b""
        try:
            endpoint, name, version = route(scope["method"], scope["path"])
            request_headers = dict(scope["headers"])
            self._authorize(endpoint, request_headers)
            transport = self.deadline(request_headers)
            if endpoint in ("ModelInfer", "ModelMetadata"):  # may load a model, or run one: on the pool
                payload = await self._read_body(request_headers, receive) if endpoint == "ModelInfer" else b""
                if self.pool.in_flight >= self.config.max_concurrent_rpcs:  # (counted below, model "-")
                    raise HttpError(429, "RESOURCE_EXHAUSTED", f"server busy: {self.config.max_concurrent_rpcs} calls "
                                    "in progress (max_concurrent_rpcs); retry with backoff")
                work = ((self._infer, name, version, payload, request_headers, transport) if endpoint == "ModelInfer"
                        else (self._metadata, name, version))
                model_ref, headers, body = await asyncio.wrap_future(self.pool.submit(*work))
            else:
                model_ref, body = self._probe(endpoint, name, version)
            status, code = 200, "OK"
        except HttpError as e:
            status, code, headers, body = e.status, e.code, _JSON + e.headers, _error(str(e))
        except Exception as e:  # noqa: BLE001 - every failure becomes a chosen status
            err = chosen_error(f"http:{endpoint}", e)
            status, code, body = _STATUS.get(err.code, 500), err.code.name, _error(str(err))
            headers = _JSON
        if status == 200 and endpoint in ("ServerLive", "ServerReady", "ModelReady"):
            headers, body = [], b""  # the answer is the status
        self.telemetry.observe_call(f"http:{endpoint}", model_ref, code, time.perf_counter() - t0)
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    def deadline(self, headers: dict) -> float | None:
        """The transport's deadline for a request (a time.monotonic() value), None for none: this port has none of its
        own (a client sets the `timeout` parameter); Serve's HTTP proxy has one (server/ray_serve.py)."""
        return None

    def _authorize(self, endpoint: str, headers: dict) -> None:
        if self._bearer is None or endpoint in ("ServerLive", "ServerReady"):
            return
        if not self._bearer.admits(headers.get(b"authorization")):
            raise HttpError(401, "UNAUTHENTICATED", "missing or wrong bearer token (header Authorization)",
                            [(b"www-authenticate", b"Bearer")])

    async def _read_body(self, headers: dict, receive) -> bytes:
        """The request body, or 413 past max_request_bytes (as over gRPC). An over-size body is read to its end and
        dropped (not kept): answering before the client has sent it all would reset the connection under its feet."""
        limit = self.config.max_request_bytes
        declared = headers.get(b"content-length", b"0")
        chunks, size = [], int(declared) if declared.isdigit() and int(declared) > limit else 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(499, "CANCELLED", "the client went away")
            part = message.get("body", b"")
            size += len(part)
            if size <= limit:
                chunks.append(part)
            if not message.get("more_body", False):
                break
        if size > limit:
            raise HttpError(413, "RESOURCE_EXHAUSTED", f"request body over the limit of {limit} bytes "
                            "(max_request_bytes)")
        encoding = headers.get(b"content-encoding", b"identity").lower()
        if encoding != b"identity":
            raise HttpError(400, "INVALID_ARGUMENT", f"Content-Encoding {encoding[:20].decode('latin-1')} is not "
                            "taken; send the body uncompressed")
        return b"".join(chunks)

    def _probe(self, endpoint: str, name: str, version: str) -> tuple[str, bytes]:
        """(model ref, body) for the health, readiness and server metadata routes (answered on the loop)."""
        if endpoint == "ServerLive":
            return "-", b""
        if endpoint == "ServerReady":
            if not self.ready():
                raise HttpError(503, "UNAVAILABLE", "not ready: loading models or shutting down")
            return "-", b""
        if endpoint == "ServerMetadata":
            return "-", _dumps({"name": oip.SERVER_NAME, "version": oip.SERVER_VERSION,
                                "extensions": list(oip.EXTENSIONS)})
        if endpoint == "ModelReady":  # callable (loaded on first use)
            ref = oip.lookup(self.registry, name, version)
            if not self.ready():
                raise HttpError(503, "UNAVAILABLE", f"{ref} is not ready: the server is shutting down")
            return ref, b""
        raise AssertionError(endpoint)

    def _metadata(self, name: str, version: str) -> tuple[str, list, bytes]:
        """On a pool thread (a version that is not resident loads first): (model ref, headers, JSON body)."""
        model = oip.resolve(self.registry, name, version)

        def specs(tensors: list[oip.TensorSpec]) -> list[dict]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]

        return model.ref, _JSON, _dumps({"name": model.name, "versions": oip.versions(self.registry, model),
                                         "platform": oip.PLATFORM, "inputs": specs(oip.input_specs(model)),
                                         "outputs": specs(oip.output_specs(model))})

    def _infer(self, name: str, version: str, payload: bytes, headers: dict,
               transport: float | None = None) -> tuple[str, list, bytes]:
        """On a pool thread: decode, check, run through the batcher, encode. (model ref, headers, body). The
        deadline is the earlier of the `timeout` parameter's and the transport's."""
        model = oip.resolve(self.registry, name, version)
        length = headers.get(HEADER_LENGTH.encode())
        inputs, params, requested, binary, rid = decode_infer(payload,
                                                              None if length is None else length.decode("latin-1"))
        call = Call(deadline=min((d for d in (oip.deadline(params), transport) if d is not None), default=None))
        job = oip.prepare(model, inputs, params, requested, self.config)
        out_headers, body = encode_infer(model, oip.run(job, call), binary, rid)
        return model.ref, out_headers, body


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _error(message: str) -> bytes:
    return _dumps({"error": message})


# -- the server thread ---------------------------------------------------------------------------------------

def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening-ready TCP socket (bound now, so the port is known before the server starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # workers of one supervisor share the port, as they share the gRPC one
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot serve HTTP on {host}:{port}: {e.strerror}") from e
    return sock


class HttpServer:
    """uvicorn serving `app` on a socket bound at construction, on its own thread and event loop."""

    def __init__(self, app, config: Config, *, reuse_port: bool = False):
        self.socket = bind(config.http_address, config.http_port, reuse_port=reuse_port)
        self.port = self.socket.getsockname()[1]
        tls, self.scheme = {}, "https" if config.tls_cert else "http"
        if config.tls_cert:
            tls = {"ssl_certfile": config.tls_cert, "ssl_keyfile": config.tls_key}
            if config.tls_client_ca:
                tls |= {"ssl_ca_certs": config.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self.server = uvicorn.Server(uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, lifespan="off", server_header=False,
            limit_concurrency=config.max_connections, timeout_keep_alive=5,  # (503 past it; idle keep-alive closed)
            **tls))
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Serve; return once uvicorn accepts connections (RuntimeError if it did not start)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                        name="http", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the v2 HTTP server did not start (see the log above)")
            time.sleep(0.01)

    def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace` seconds, close."""
        if self._thread is not None:
            self.server.config.timeout_graceful_shutdown = max(grace, 0.05)
            self.server.should_exit = True
            self._thread.join(grace + 5)
        self.socket.close()
