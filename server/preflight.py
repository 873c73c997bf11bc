"""Configuration that cannot work, found before anything starts: one line naming the setting and the fix, exit 2
(`python -m server` prints it instead of a traceback). Value ranges are checked by Config itself; these are the
checks against the machine: the store folder, the TLS and token files, the ONNX Runtime providers, the port."""

from __future__ import annotations

import os
from pathlib import Path

from ganserve.store.sessions import choose_providers
from server.supervisor import claim_port
from server.config import Config


class ConfigError(Exception):
    """A setting that cannot work here; the message names the flag and the fix."""


def _readable(flag: str, path: str) -> None:
    if path and not os.access(path, os.R_OK):
        why = "no such file" if not Path(path).exists() else "not readable by this user"
        raise ConfigError(f"--{flag} {path}: {why} (give a readable PEM/text file, or leave it unset)")


def check(config: Config) -> None:
    """Raise ConfigError for the first setting that cannot work on this machine."""
    if not Path(config.store).is_dir():
        raise ConfigError(f"--store {config.store}: no such folder (give the model store, e.g. --store model_store, "
                          f"resolved against {Path.cwd()})")
    for flag, path in (("tls-cert", config.tls_cert), ("tls-key", config.tls_key),
                       ("tls-client-ca", config.tls_client_ca), ("auth-token-file", config.auth_token_file)):
        _readable(flag, path)
    try:
        choose_providers(config.providers)
    except RuntimeError as e:
        raise ConfigError(f"--providers {config.providers}: {e}; or use --providers auto") from None
    if config.frontend == "python":  # the native front end and the supervisor claim their ports themselves
        try:
            claim_port(config.address)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--address: {e} (another process listens there? pick another port)") from None
