"""The external-data files an ONNX graph refers to, so a store can refuse any it does not vouch for.

An ONNX tensor may keep its bytes in another file (`data_location: EXTERNAL`, a `location` relative to the
graph's folder). ONNX Runtime before 1.24.1 followed such paths out of the folder (`../../etc/passwd` loaded,
and Sample returned that file's bytes), and even inside the folder such a file is not covered by the
manifest's sha256 unless it is listed. `external_files` lists every location a graph names, walking
initializers, sparse initializers, node attributes, sub-graphs (If/Loop/Scan) and functions, without loading
any tensor data; the store's `verify_files` refuses a graph that names one not listed in its manifest.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import AttributeProto, GraphProto, TensorProto


def _tensor_locations(t: TensorProto):
    if t.data_location == TensorProto.EXTERNAL:
        entries = {e.key: e.value for e in t.external_data}
        yield entries.get("location", "")


def _attribute_locations(a: AttributeProto):
    for t in [a.t, *a.tensors] if a.HasField("t") else a.tensors:
        yield from _tensor_locations(t)
    for s in [a.sparse_tensor, *a.sparse_tensors] if a.HasField("sparse_tensor") else a.sparse_tensors:
        yield from _tensor_locations(s.values)
        yield from _tensor_locations(s.indices)
    for g in [a.g, *a.graphs] if a.HasField("g") else a.graphs:
        yield from _graph_locations(g)


def _nodes_locations(nodes):
    for node in nodes:
        for a in node.attribute:
            yield from _attribute_locations(a)


def _graph_locations(g: GraphProto):
    for t in g.initializer:
        yield from _tensor_locations(t)
    for s in g.sparse_initializer:
        yield from _tensor_locations(s.values)
        yield from _tensor_locations(s.indices)
    yield from _nodes_locations(g.node)


def external_files(path: str | Path) -> list[str]:
    """Every external-data location named in the ONNX file at `path`, as written (sorted, without repeats)."""
    model = onnx.load(str(path), load_external_data=False)
    found = set(_graph_locations(model.graph))
    for f in model.functions:
        found.update(_nodes_locations(f.node))
    return sorted(found)
