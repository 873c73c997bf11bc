"""Publish a trained model into the store: manifest (ganserve/store/manifest.py's schema) + files, atomically."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from ganserve.store.manifest import publish as store_publish


def build_manifest(name: str, fields: dict[str, Any], graphs: dict, training: dict, metrics: dict,
                   export: dict) -> dict[str, Any]:
    """Assemble a format-1 manifest; `fields` holds kind, data_kind, latent_dim, classes, output, ..."""
    return {"format": 1, "name": name, "version": 1,  # the version is assigned by publish()
            "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            **fields, "graphs": graphs, "files": {}, "training": training,
            "metrics": {k: v for k, v in metrics.items()}, "export": export}


def publish_model(store: Path, manifest: dict[str, Any], files: dict[str, Path]) -> Path:
    """Copy `files` (+ the manifest with their sha256) into store/<name>/<next version>/ atomically."""
    missing = [f for f in files.values() if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot publish {manifest['name']}: missing {missing}")
    return store_publish(Path(store), manifest, {k: Path(v) for k, v in files.items()})
