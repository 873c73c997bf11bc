"""Joining a Ray cluster (or starting one on this machine) the same way for batch jobs and Serve."""

from __future__ import annotations

import os

import ray
from ray._private import ray_constants

LOOPBACK = ("127.0.0.1", "localhost")


def is_loopback(address: str) -> bool:
    return address in ("local", "") or address.rsplit(":", 1)[0] in LOOPBACK


def use_loopback() -> None:
    """Make Ray name this machine 127.0.0.1. Ray's single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
    read when ray is imported) does that; without it a driver rewrites 127.0.0.1 to the address of the outside
    interface, which a loopback cluster does not listen on, and a new local cluster binds that interface."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the processes Ray starts from here
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process, which imported ray already


def connect(address: str = "local", *, runtime_env: dict | None = None, num_cpus: int | None = None) -> bool:
    """ray.init for `address` ("local": a new cluster on this machine; "auto", host:port: join one), quiet and
    without the dashboard; True when this call started the connection (the caller then shuts it down)."""
    if ray.is_initialized():
        return False
    if is_loopback(address):
        use_loopback()
    ray.init(address="local" if address in ("local", "") else address, include_dashboard=False,
             logging_level="ERROR", runtime_env=runtime_env, num_cpus=num_cpus)
    return True
