"""Server configuration: one frozen dataclass, filled from flags, then GANSERVE_* environment variables, then
the defaults below (a flag beats the environment, the environment beats the default).

Every field has a flag `--field-name` and an environment variable `GANSERVE_FIELD_NAME`; `python -m server
--help` lists them. Defaults are chosen for this project's 2-core machine: one intra-op thread per ONNX
Runtime session (2-thread pools collapsed under contention: docs/design.md#facts-measured-on-this-machine) and a
max queue delay of 0 (batch what is already waiting, never wait for more). docs/operations.md lists every
setting (generated from this class: `python -m docs.generate`).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ganserve.store import policy

ENV_PREFIX = "GANSERVE_"


@dataclass(frozen=True)
class Config:
    # where and what
    address: str = field(default="localhost:50051", metadata={"help": "listen address host:port (port 0 = any)"})
    store: str = field(default="model_store", metadata={"help": "model store folder"})
    reload_interval_s: float = field(default=2.0, metadata={"help": "store polling period for hot reload; 0 = off"})
    default_model: str = field(default="", metadata={"help": "default unconditional model (empty: first by name)"})
    default_conditional_model: str = field(default="", metadata={"help": "default conditional model"})
    # the repository: which versions are served, which are in memory (docs/model_store.md)
    version_policy: str = field(default="", metadata={
        "help": "per model: 'name=latest', 'name=pinned:V' or 'name=specific:V,W', ';'-separated (default latest); "
                "a policy.json in the model's store folder beats this (python -m ganserve.store writes it)"})
    quality_gate: bool = field(default=True, metadata={
        "help": "a new version becomes the default only if its judged figures are not worse than the serving "
                "version's beyond the stated tolerances (ganserve/store/policy.py); else it is a CANDIDATE"})
    warm_models: str = field(default="defaults", metadata={
        "help": "versions loaded at start and never evicted: 'defaults' (each model's default version), 'all' "
                "(every version), 'none', and/or names or name@version, comma-separated; the rest load on first use"})
    check_cold_versions: bool = field(default=True, metadata={
        "help": "after each scan, load-check (sessions, probe) every version outside the warm set once in the "
                "background and let it go, so the index shows a broken one UNAVAILABLE before its first call"})
    model_memory_mb: float = field(default=0.0, metadata={
        "help": "budget for resident model graphs (their ONNX files' size); beyond it the least recently used "
                "versions outside the warm set are evicted. 0 = no limit"})
    # ONNX Runtime
    providers: str = field(default="auto", metadata={"help": "auto (CUDA if present, else CPU) | cpu | cuda"})
    intra_op_threads: int = field(default=1, metadata={"help": "intra-op threads per ONNX Runtime session"})
    model_runners: int = field(default=2, metadata={
        "help": "ONNX Runtime calls at once for one large batch (>= 64 rows, cut into this many parts)"})
    workers: int = field(default=1, metadata={
        "help": "server processes sharing the address (SO_REUSEPORT; connections are spread over them). One "
                "process tops out at ~1 core of per-request Python (the GIL): on a multi-core machine, 2 or more "
                "serve more single-sample requests/s. Worker i serves metrics on metrics_port + i"})
    frontend: str = field(default="python", metadata={
        "help": "python | native. native: a Go front end (gateway/, `make gateway`) takes the calls on `address` "
                "and hands Sample/SampleConditional to this process in batches, the rest relayed; this process "
                "listens on a private Unix socket. Lifts the ~1 core of per-request Python (see workers)"})
    gateway_binary: str = field(default="", metadata={
        "help": "the native front end's executable (empty: build/ganserve-gateway, then ganserve-gateway on PATH)"})
    gateway_max_batch: int = field(default=64, metadata={"help": "native front end: most calls in one batch"})
    gateway_inflight: int = field(default=2, metadata={
        "help": "native front end: batches in flight at once (about the cores the models compute on)"})
    max_concurrent_rpcs: int = field(default=128, metadata={
        "help": "GeneratorService RPCs handled at once (one thread each); more are answered RESOURCE_EXHAUSTED "
                "at once. Health and reflection are never refused"})
    # dynamic batcher (Triton's knobs)
    max_batch_samples: int = field(default=256, metadata={"help": "largest batch run at once, in samples"})
    max_queue_delay_ms: float = field(default=0.0, metadata={"help": "wait this long for more requests to batch"})
    batch_halve_ms: float = field(default=1.0, metadata={
        "help": "when the requests waiting for a model would take at least this long to run together, a batch "
                "takes half of them, so the model computes one half while the other is answered and read (no "
                "convoy of replies and requests); 0 = always take all. Not with a queue delay"})
    inline_when_idle: bool = field(default=True, metadata={
        "help": "a request that finds its model idle runs on its own thread (no hand-off to the batcher's); "
                "requests arriving meanwhile are batched as usual. Off with a queue delay"})
    idle_threads: int = field(default=2, metadata={
        "help": "intra-op threads of a second generator session for a small request (< 64 samples) that finds "
                "its model idle and is the only RPC in flight; its threads sleep instead of spinning. 1 = no "
                "second session (CPU only)"})
    max_queue_size: int = field(default=64, metadata={"help": "requests waiting per model; more = RESOURCE_EXHAUSTED"})
    queue_timeout_ms: float = field(default=10000.0, metadata={"help": "a request waiting longer is rejected"})
    # limits
    max_samples: int = field(default=1024, metadata={"help": "largest n of Sample/SampleConditional"})
    max_stream_samples: int = field(default=10_000_000, metadata={"help": "largest n of one SampleStream"})
    stream_chunk: int = field(default=256, metadata={"help": "default SampleStream chunk size"})
    max_stream_chunk: int = field(default=4096, metadata={"help": "largest SampleStream chunk size"})
    max_steps: int = field(default=256, metadata={"help": "largest Interpolate steps per segment"})
    max_latent_abs: float = field(default=1e4, metadata={
        "help": "explicit latents (Sample, SampleConditional, Interpolate endpoints) must be within +-this; "
                "larger ones overflow float32 inside a generator"})
    max_endpoints: int = field(default=16, metadata={"help": "most Interpolate endpoints"})
    max_invert_steps: int = field(default=500, metadata={"help": "largest Invert optimisation steps"})
    max_images: int = field(default=256, metadata={"help": "most images in one Invert request"})
    max_eval_n: int = field(default=10000, metadata={"help": "largest EvaluateDivergence n per side"})
    default_eval_n: int = field(default=2000, metadata={"help": "EvaluateDivergence n when the request says 0"})
    max_bootstrap: int = field(default=200, metadata={"help": "largest bootstrap resample count"})
    max_request_bytes: int = field(default=8 << 20, metadata={
        "help": "largest request message of every call but EvaluateDivergence (RESOURCE_EXHAUSTED above it)"})
    max_upload_bytes: int = field(default=64 << 20, metadata={
        "help": "largest EvaluateDivergence request (uploaded samples: 2 x 10,000 MNIST images as float32 "
                "are 63 MB)"})
    max_message_bytes: int = field(default=64 << 20, metadata={
        "help": "largest reply message (requests: max_request_bytes, max_upload_bytes)"})
    # connections (docs/security.md): both front ends, the v2 REST port and the metrics endpoint
    max_connections: int = field(default=4096, metadata={
        "help": "open client connections at most (more are closed at once); the soft open-file limit is raised "
                "at start to fit them"})
    connection_idle_s: float = field(default=300.0, metadata={
        "help": "close a connection that had no call for this long (clients reconnect on their next call)"})
    connection_max_age_s: float = field(default=3600.0, metadata={
        "help": "ask a client to reconnect after this long (spreads load after a scale-out); 0 = never"})
    connection_age_grace_s: float = field(default=3600.0, metadata={
        "help": "calls still running when a connection reaches its age get this long to finish (a 10M-sample "
                "SampleStream takes ~70 min on 2 cores; it can resume from an offset)"})
    handshake_timeout_s: float = field(default=10.0, metadata={
        "help": "a new connection must finish its TLS handshake and HTTP/2 preface in this time"})
    keepalive_s: float = field(default=60.0, metadata={
        "help": "ping a connection silent this long (while it has calls) and close it if no answer in 20 s; "
                "clients may ping at most every 5 minutes without calls (2 strikes, then GOAWAY)"})
    memory_budget_mb: int = field(default=512, metadata={
        "help": "bytes of GeneratorService requests and replies in flight at once (each request charged 3x its "
                "size, each reply 3x its float32 samples); a call over it is answered RESOURCE_EXHAUSTED at once. "
                "Per process (each worker has its own). docs/reliability.md says what it covers"})
    stream_share: float = field(default=0.5, metadata={
        "help": "at most this share of max_concurrent_rpcs may be SampleStream calls; more are RESOURCE_EXHAUSTED"})
    stream_send_timeout_s: float = field(default=30.0, metadata={
        "help": "a stream whose client has not read for this long (its send blocked) is cancelled (CANCELLED)"})
    max_stream_s: float = field(default=3600.0, metadata={
        "help": "a SampleStream ends after this long with DEADLINE_EXCEEDED (continue from the next offset)"})
    # operations
    metrics_port: int = field(default=9464, metadata={"help": "Prometheus /metrics port (0 = any free port, -1 = off)"})
    metrics_address: str = field(default="127.0.0.1", metadata={"help": "Prometheus bind address"})
    http_port: int = field(default=-1, metadata={
        "help": "Open Inference Protocol (KServe v2) REST/JSON port (-1 = off, 0 = any free port); the v2 gRPC "
                "service is always on `address` (docs/open_inference_protocol.md)"})
    http_address: str = field(default="127.0.0.1", metadata={"help": "v2 REST bind address (0.0.0.0 in a container)"})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG | INFO | WARNING | ERROR"})
    log_format: str = field(default="text", metadata={"help": "text | json (one JSON object per line)"})
    shutdown_notice_s: float = field(default=1.0, metadata={
        "help": "SIGTERM: health answers NOT_SERVING (calls still served) for this long before the port closes "
                "and the drain starts; set it to your readiness probe period so probes see it"})
    drain_s: float = field(default=10.0, metadata={"help": "SIGTERM: wait this long for in-flight requests"})
    # access
    tls_cert: str = field(default="", metadata={"help": "server certificate (PEM); enables TLS with tls_key"})
    tls_key: str = field(default="", metadata={"help": "server private key (PEM)"})
    tls_client_ca: str = field(default="", metadata={"help": "CA (PEM) whose client certificates are required"})
    auth_token: str = field(default="", metadata={
        "help": "bearer token required on every RPC (not health); environment only: as a flag it would be visible "
                "to every user of the machine (ps), so --auth-token is refused"})
    auth_token_file: str = field(default="", metadata={
        "help": "file holding the bearer token (make it readable by this user only)"})

    def __post_init__(self):
        checks = [
            (self.providers in ("auto", "cpu", "cuda"), "providers must be auto, cpu or cuda"),
            (self.intra_op_threads >= 1, "intra_op_threads must be >= 1"),
            (self.model_runners >= 1, "model_runners must be >= 1"),
            (1 <= self.workers <= 64, "workers must be in 1..64"),
            (self.frontend in ("python", "native"), "frontend must be python or native"),
            (self.frontend == "python" or self.workers == 1,
             "frontend native runs one server process behind the gateway: use workers 1"),
            (1 <= self.gateway_max_batch <= 4096 and 1 <= self.gateway_inflight <= 64,
             "gateway_max_batch must be in 1..4096 and gateway_inflight in 1..64"),
            (self.idle_threads >= 1, "idle_threads must be >= 1"),
            (self.max_concurrent_rpcs >= 1, "max_concurrent_rpcs must be >= 1"),
            (self.max_batch_samples >= 1, "max_batch_samples must be >= 1"),
            (self.max_queue_delay_ms >= 0, "max_queue_delay_ms must be >= 0"),
            (self.batch_halve_ms >= 0, "batch_halve_ms must be >= 0"),
            (self.max_queue_size >= 1, "max_queue_size must be >= 1"),
            (self.queue_timeout_ms > 0, "queue_timeout_ms must be > 0"),
            (min(self.max_samples, self.max_stream_samples, self.stream_chunk, self.max_stream_chunk,
                 self.max_steps, self.max_images, self.max_eval_n, self.default_eval_n) >= 1,
             "limits must be >= 1"),
            (self.max_endpoints >= 2, "max_endpoints must be >= 2"),
            (0 < self.max_latent_abs < 1e30, "max_latent_abs must be in (0, 1e30)"),
            (self.max_invert_steps >= 0 and self.max_bootstrap >= 0, "limits must be >= 0"),
            (min(self.max_message_bytes, self.max_request_bytes, self.max_upload_bytes) >= 1024,
             "max_message_bytes, max_request_bytes and max_upload_bytes must be >= 1024"),
            (self.max_message_bytes >= 1024, "max_message_bytes must be >= 1024"),
            (self.memory_budget_mb >= 1, "memory_budget_mb must be >= 1"),
            (0 < self.stream_share <= 1, "stream_share must be in (0, 1]"),
            (self.stream_send_timeout_s > 0 and self.max_stream_s > 0,
             "stream_send_timeout_s and max_stream_s must be > 0"),
            (self.shutdown_notice_s >= 0, "shutdown_notice_s must be >= 0"),
            (self.log_format in ("text", "json"), "log_format must be text or json"),
            (self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "bad log_level"),
            (bool(self.tls_cert) == bool(self.tls_key), "tls_cert and tls_key go together"),
            (not self.tls_client_ca or bool(self.tls_cert), "tls_client_ca needs tls_cert and tls_key"),
            (self.max_connections >= 1, "max_connections must be >= 1"),
            (min(self.connection_idle_s, self.handshake_timeout_s, self.keepalive_s) > 0,
             "connection_idle_s, handshake_timeout_s and keepalive_s must be > 0"),
            (min(self.connection_max_age_s, self.connection_age_grace_s) >= 0,
             "connection_max_age_s and connection_age_grace_s must be >= 0"),
            (self.metrics_port >= -1, "metrics_port must be -1 (off), 0 (any) or a port"),
            (self.model_memory_mb >= 0, "model_memory_mb must be >= 0 (0 = no limit)"),
            (-1 <= self.http_port <= 65535, "http_port must be -1 (off), 0 (any) or a port"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        try:
            policy.parse_flag(self.version_policy)
        except policy.PolicyError as e:
            raise ValueError(f"version_policy: {e}") from e

    def token(self) -> str:
        """The bearer token: auth_token, else the content of auth_token_file, else '' (auth off)."""
        if self.auth_token:
            return self.auth_token
        if self.auth_token_file:
            return Path(self.auth_token_file).read_text().strip()
        return ""


def boolean(raw: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (flags and GANSERVE_* variables)."""
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


_KINDS = {"int": int, "float": float, "str": str, "bool": boolean}


def _kind(f):
    kind = _KINDS[f.type] if isinstance(f.type, str) else f.type
    return boolean if kind is bool else kind


def _parse_env(f, raw: str):
    kind = _kind(f)
    try:
        return kind(raw)
    except ValueError as e:
        raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: {e}") from e


ENV_ONLY = ("auth_token",)  # secrets: a command line is readable by every user (/proc/<pid>/cmdline)


class _Refused(argparse.Action):
    """A flag that only says what to use instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is refused: a token on the command line is visible to every user of this "
                     "machine (ps, /proc/<pid>/cmdline). Put it in a file only you can read and pass "
                     "--auth-token-file FILE, or set GANSERVE_AUTH_TOKEN")


def from_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Config:
    """Flags > GANSERVE_* environment > defaults."""
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(prog="python -m server", description="ganserve gRPC server",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults, secrets = Config(), {}
    for f in fields(Config):
        kind = _kind(f)
        var = ENV_PREFIX + f.name.upper()
        try:
            default = _parse_env(f, env[var]) if var in env else getattr(defaults, f.name)
        except ValueError as e:
            p.error(str(e))
        if f.name in ENV_ONLY:  # (its default, from the environment, is never printed by --help)
            secrets[f.name] = default
            p.add_argument("--" + f.name.replace("_", "-"), action=_Refused, default=argparse.SUPPRESS,
                           help=f"refused: set {var} or use --{f.name.replace('_', '-')}-file")
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default,
                       help=f"{f.metadata['help']} [env {var}]")
    args = p.parse_args(argv)
    try:
        return Config(**{**secrets, **vars(args)})
    except ValueError as e:
        p.error(str(e))
