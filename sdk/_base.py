"""What Client and AsyncClient share: settings (target precedence, credentials, token), the channel, copies with
other defaults, and the retry decision."""

from __future__ import annotations

import copy
import ipaddress
import os
import random
import time
import warnings
from pathlib import Path

import grpc

from protos.ganserve.v1 import generator_pb2_grpc as pb_grpc
from sdk import _constants as C
from sdk._errors import RETRYABLE, DeadlineExceededError, GanserveError, from_rpc_error


def _read(value: bytes | str | os.PathLike | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _is_local(target: str) -> bool:
    """Whether a gRPC target is this machine: a Unix socket or a loopback host (a token may travel in clear)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme):]
            break
    host = target.split(",")[0]  # (ipv4:a:1,b:2 lists several)
    if host.startswith("["):  # [v6]:port
        host = host[1:host.find("]")]
    elif host.count(":") == 1:  # host:port (a bare v6 address has more colons)
        host = host.split(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Settings:
    """What both clients resolve the same way: target, credentials, metadata, timeout, retries."""

    def __init__(self, target, *, timeout, retries, tls, root_certificates, client_cert, client_key, token):
        self.target = target or os.environ.get(C.ENV_TARGET) or C.DEFAULT_TARGET
        self.timeout = C.DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
        self.retries = C.DEFAULT_RETRIES if retries is None else int(retries)
        token = token if token is not None else os.environ.get(C.ENV_TOKEN)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.tls = bool(tls or root_certificates or client_cert)
        if token and not self.tls and not _is_local(self.target):
            warnings.warn(f"sending a bearer token without TLS to {self.target}: anyone on the network path can read "
                          "it; pass tls=True (and root_certificates= for a private CA)", UserWarning, stacklevel=3)
        self.credentials = grpc.ssl_channel_credentials(_read(root_certificates), _read(client_key),
                                                        _read(client_cert)) if self.tls else None
        self.options = [("grpc.max_receive_message_length", C.MAX_MESSAGE_BYTES),
                        ("grpc.max_send_message_length", C.MAX_MESSAGE_BYTES)]

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^attempt)]."""
        return random.uniform(0, min(C.BACKOFF_MAX_S, C.BACKOFF_INITIAL_S * 2 ** attempt))


class _Base:
    _grpc = grpc  # grpc (sync) or grpc.aio: both have secure_channel / insecure_channel

    def __init__(self, target: str | None = None, *, timeout: float | None = None, retries: int | None = None,
                 tls: bool = False, root_certificates=None, client_cert=None, client_key=None,
                 token: str | None = None):
        self._s = _Settings(target, timeout=timeout, retries=retries, tls=tls, root_certificates=root_certificates,
                            client_cert=client_cert, client_key=client_key, token=token)
        s = self._s
        self._channel = (self._grpc.secure_channel(s.target, s.credentials, s.options) if s.tls
                         else self._grpc.insecure_channel(s.target, s.options))
        self._stub = pb_grpc.GeneratorServiceStub(self._channel)
        self._owner = True

    @property
    def target(self) -> str:
        return self._s.target

    def with_options(self, *, timeout: float | None = None, retries: int | None = None):
        """A copy sharing the connection, with other defaults: `client.with_options(timeout=5).sample(...)`."""
        other = copy.copy(self)
        other._s = copy.copy(self._s)
        if timeout is not None:
            other._s.timeout = float(timeout)
        if retries is not None:
            other._s.retries = int(retries)
        other._owner = False
        return other

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self._s.timeout if timeout is None else timeout)

    @staticmethod
    def _left(method: str, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{method}: no time left for a retry")
        return left

    def _retry_pause(self, err: grpc.RpcError, attempt: int, deadline: float) -> tuple[float, GanserveError]:
        """(seconds to wait before the next attempt, or -1 to give up; the typed error)."""
        typed = from_rpc_error(err)
        left = deadline - time.monotonic()
        if err.code() not in RETRYABLE or attempt >= self._s.retries or left <= C.MIN_ATTEMPT_S:
            return -1.0, typed
        # A jittered pause that would cross the deadline is cut to half the time left, so the call keeps trying
        # until its deadline instead of giving up early on an unlucky draw.
        return min(self._s.backoff(attempt), left / 2), typed
