"""Call ganserve with Triton's client library and no ganserve code: the Open Inference Protocol (KServe v2).

    pip install tritonclient packaging geventhttpclient     # (tritonclient[grpc] pins protobuf < 7)
    python -m server --http-port 8000 &                     # v2 over gRPC on :50051, over REST on :8000
    python examples/tritonclient_v2.py --grpc localhost:50051 --http localhost:8000 --label 7 --n 16 --seed 1

For each protocol it checks that the server is live and ready, prints the model's metadata, asks for n samples
of the label with the seed, and prints their shape and checksum (the same seed gives the same bytes over both
protocols and over ganserve's own API). `--out file.npz` saves them (arrays `grpc` and `http`); `--token`
sends `Authorization: Bearer <token>`. This script imports tritonclient only: its generated `inference`
messages would clash with ganserve's own copy of the same proto in one Python process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def infer(client, module, model: str, seed: int, n: int, labels: list[int] | None, datatype: str):
    """n samples of `model` for `seed` (and labels), as a numpy array."""
    inputs = [module.InferInput("seed", [1], "INT64"), module.InferInput("n", [1], "INT64")]
    inputs[0].set_data_from_numpy(np.array([seed], np.int64))
    inputs[1].set_data_from_numpy(np.array([n], np.int64))
    if labels is not None:
        inputs.append(module.InferInput("labels", [len(labels)], "INT64"))
        inputs[-1].set_data_from_numpy(np.array(labels, np.int64))
    result = client.infer(model, inputs, outputs=[module.InferRequestedOutput("samples")],
                          parameters={"samples_datatype": datatype})
    return result.as_numpy("samples")


def run(kind: str, url: str, args) -> np.ndarray:
    module = grpcclient if kind == "grpc" else httpclient
    headers = {"authorization": f"Bearer {args.token}"} if args.token else None
    client = module.InferenceServerClient(url=url)
    live, ready = client.is_server_live(headers=headers), client.is_server_ready(headers=headers)
    model_ready = client.is_model_ready(args.model, headers=headers)
    meta = client.get_model_metadata(args.model, headers=headers, **({"as_json": True} if kind == "grpc" else {}))
    print(f"{kind}: live={live} ready={ready} model_ready={model_ready}")
    print(f"{kind}: metadata {json.dumps(meta, sort_keys=True)}")
    labels = [args.label] * args.n if args.label is not None else None
    samples = infer(client, module, args.model, args.seed, args.n, labels, args.datatype)
    digest = hashlib.sha256(samples.tobytes()).hexdigest()[:16]
    print(f"{kind}: samples {samples.dtype} {list(samples.shape)} in [{samples.min():g}, {samples.max():g}] "
          f"sha256 {digest}")
    client.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grpc", default="", help="host:port of ganserve's gRPC (v2 is served there); empty = skip")
    p.add_argument("--http", default="", help="host:port of ganserve's v2 REST port (--http-port); empty = skip")
    p.add_argument("--model", default="cgan-mnist")
    p.add_argument("--label", type=int, default=None, help="conditional models: the label of every sample")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--datatype", default="FP32", choices=["FP32", "UINT8"])
    p.add_argument("--token", default="")
    p.add_argument("--out", default="", help="save the samples to this .npz (arrays grpc, http)")
    args = p.parse_args(argv)
    got = {kind: run(kind, url, args) for kind, url in (("grpc", args.grpc), ("http", args.http)) if url}
    if len(got) == 2:
        print("grpc and http samples identical:", got["grpc"].tobytes() == got["http"].tobytes())
    if args.out:
        np.savez(args.out, **got)
    return 0


if __name__ == "__main__":
    sys.exit(main())
