"""server/validate.py on its own: each check at its boundary, each refusal with its exact field and message, each
accepted value exactly as the engine receives it. A stand-in model carries only the attributes the checks read
(tests/test_server_bad_input.py sends the same refusals through a real server)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from protos import tensors
from protos.ganserve.v1 import generator_pb2 as pb
from server import validate as v
from server.errors import FailedPrecondition, InvalidArgument

T = tensors.from_array


@dataclass
class Model:
    ref: str = "m@1"
    kind: str = "gan"
    data_kind: str = "image"
    value_range: tuple | None = (-1.0, 1.0)
    latent_dim: int = 3
    conditional: bool = False
    num_classes: int = 0
    output_shape: tuple = (1, 2, 2)
    caps: dict = field(default_factory=lambda: {"soft_labels": False, "invertible": False, "optimizable": False})

    def capabilities(self):
        return self.caps


POINTS = Model(ref="p@1", data_kind="points", value_range=None, output_shape=(2,))
COND = Model(ref="c@2", kind="cgan", conditional=True, num_classes=3,
             caps={"soft_labels": True, "invertible": False, "optimizable": False})


def refused(call, fld: str, message: str, cls=InvalidArgument):
    with pytest.raises(cls) as err:
        call()
    assert type(err.value) is cls and (err.value.field, err.value.reason) == (fld, message)


def test_seed_is_the_requests_or_a_fresh_63_bit_one():
    assert v.seed(True, 0) == 0 and v.seed(True, 2**64 - 1) == 2**64 - 1
    fresh = {v.seed(False, 5) for _ in range(4)}
    assert len(fresh) == 4 and all(0 <= s < 2**63 and s != 5 for s in fresh)


def test_count_bounds():
    assert v.count(1, 8) == 1 and v.count(8, 8) == 8
    refused(lambda: v.count(0, 8), "n", "must be at least 1, got 0")
    refused(lambda: v.count(9, 8, "k"), "k", "must be at most 8 (the server's limit), got 9")


def test_truncation():
    assert [v.truncation(t) for t in (0, 0.25, 2)] == [0.0, 0.25, 2.0]
    refused(lambda: v.truncation(0.2499), "truncation", "must be 0 (off) or at least 0.25, got 0.2499")
    refused(lambda: v.truncation(-1), "truncation", "must be 0 (off) or at least 0.25, got -1")
    refused(lambda: v.truncation(float("nan"), "t"), "t", "must be finite, got nan")


def test_finite_float():
    assert v.finite_float(0, "lr") == 0.0 and v.finite_float(2.5, "lr", minimum=2.5) == 2.5
    refused(lambda: v.finite_float(-0.5, "lr"), "lr", "must be >= 0, got -0.5")
    refused(lambda: v.finite_float(1, "lr", minimum=1.5), "lr", "must be >= 1.5, got 1")
    refused(lambda: v.finite_float(float("inf"), "lr"), "lr", "must be finite, got inf")


def test_encoding():
    m = Model()
    assert v.encoding(m, pb.ENCODING_UNSPECIFIED) == pb.ENCODING_FLOAT32
    assert [v.encoding(m, e) for e in (pb.ENCODING_FLOAT32, pb.ENCODING_UINT8, pb.ENCODING_PNG)] == [
        pb.ENCODING_FLOAT32, pb.ENCODING_UINT8, pb.ENCODING_PNG]
    assert v.encoding(POINTS, pb.ENCODING_FLOAT32) == pb.ENCODING_FLOAT32
    refused(lambda: v.encoding(m, 99), "encoding", "unknown encoding 99")
    for e in (pb.ENCODING_UINT8, pb.ENCODING_PNG):
        refused(lambda e=e: v.encoding(POINTS, e, "enc"), "enc",
                f"{pb.Encoding.Name(e)} is for image models; p@1 outputs points, use ENCODING_FLOAT32")
    no_range = Model(value_range=None)
    refused(lambda: v.encoding(no_range, pb.ENCODING_PNG), "encoding",
            "ENCODING_PNG is for image models; m@1 outputs points, use ENCODING_FLOAT32")


def test_float_tensor():
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(v.float_tensor(T(x), "z", max_elements=4), x)
    refused(lambda: v.float_tensor(T(x), "z", max_elements=3), "z.shape", "4 elements exceed the limit of 3")
    refused(lambda: v.float_tensor(T(x.astype(np.uint8)), "z", max_elements=4), "z.dtype", "must be FLOAT32, got UINT8")
    bad = x.copy()
    bad[1, 1] = np.inf
    refused(lambda: v.float_tensor(T(bad), "z", max_elements=4), "z.data", "must be finite (no NaN or Inf)")


def test_latents():
    m = Model()
    z = np.array([[0, 1, -2], [3, 0, 10000]], np.float32)
    got = v.latents(T(z), m, 2)
    np.testing.assert_array_equal(got, z)
    assert got.flags.c_contiguous
    refused(lambda: v.latents(T(np.zeros((3, 3), np.float32)), m, 2), "latents.shape", "9 elements exceed the "
            "limit of 6")
    refused(lambda: v.latents(T(np.zeros((2, 2), np.float32)), m, 2, "ep"), "ep.shape", "must be [n, 3], got [2, 2]")
    refused(lambda: v.latents(T(np.zeros(3, np.float32)), m, 2), "latents.shape", "must be [n, 3], got [3]")
    refused(lambda: v.latents(T(np.zeros((0, 3), np.float32)), m, 2), "latents.shape[0]", "must be at least 1, got 0")
    big = z.copy()
    big[0, 0] = -10000.5
    refused(lambda: v.latents(T(big), m, 2, "x"), "x.data", "latent entries must be within +-10000 (the server's "
            "max_latent_abs; prior draws are within ~6), got 10000.5")
    refused(lambda: v.latents(T(z), m, 2, bound=9.5), "latents.data", "latent entries must be within +-9.5 (the "
            "server's max_latent_abs; prior draws are within ~6), got 10000")
    np.testing.assert_array_equal(v.latents(T(z), m, 2, bound=10000), z)
    zero = Model(latent_dim=0)
    assert v.latents(T(np.zeros((1, 0), np.float32)), zero, 1).shape == (1, 0)  # limit x max(dim, 1) elements
    np.testing.assert_array_equal(v.bounded(np.zeros((0, 3)), "z", 1.0), np.zeros((0, 3)))


def test_labels_of_an_unconditional_model():
    assert v.labels(Model(), [], pb.Tensor(), 4) is None
    refused(lambda: v.labels(Model(), [1], pb.Tensor(), 1, prefix="p."), "p.labels",
            "m@1 is unconditional (kind gan); send no labels")
    refused(lambda: v.labels(Model(), [], T(np.ones((1, 2), np.float32)), 1, soft_name="soft"), "soft",
            "m@1 is unconditional; send no soft labels")


def test_hard_labels():
    eye = np.eye(3, dtype=np.float32)
    np.testing.assert_array_equal(v.labels(COND, [2], pb.Tensor(), 3), eye[[2, 2, 2]])
    np.testing.assert_array_equal(v.labels(COND, [2], pb.Tensor(), 3, expand=False), eye[[2]])
    np.testing.assert_array_equal(v.labels(COND, [0, 2, 1], pb.Tensor(), 3), eye[[0, 2, 1]])
    got = v.labels(COND, [1], pb.Tensor(), 1)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, eye[[1]])
    refused(lambda: v.labels(COND, [0, 1], pb.Tensor(), 3), "labels", "give 1 label or n = 3 labels, got 2")
    refused(lambda: v.labels(COND, [0, 3, -1], pb.Tensor(), 3, prefix="q.", hard_name="ls"), "q.ls[1]",
            "must be in 0..2, got 3")
    refused(lambda: v.labels(COND, [-1], pb.Tensor(), 1), "labels[0]", "must be in 0..2, got -1")
    refused(lambda: v.labels(COND, [3], pb.Tensor(), 4, prefix="q."), "q.labels[0]", "must be in 0..2, got 3")
    got[0, 0] = 9  # the rows are the caller's own: the next call's one-hot is unchanged
    np.testing.assert_array_equal(v.labels(COND, [0], pb.Tensor(), 1), eye[[0]])
    refused(lambda: v.labels(COND, [1], T(eye[:1]), 1), "labels", "give labels or soft_labels, not both")
    refused(lambda: v.labels(COND, [], pb.Tensor(), 1, prefix="p."), "p.labels",
            "c@2 is conditional (kind cgan): give labels or soft_labels")
    assert v.labels(COND, [], pb.Tensor(), 1, required=False) is None


def test_soft_labels():
    y = np.array([[0.25, 0.75, 0], [1, 0, 0]], np.float32)
    np.testing.assert_array_equal(v.labels(COND, [], T(y), 2), y)
    np.testing.assert_array_equal(v.labels(COND, [], T(y[0]), 1), y[:1])  # [K] for one sample
    np.testing.assert_array_equal(v.labels(COND, [], T(y[:1]), 3), y[[0, 0, 0]])
    np.testing.assert_array_equal(v.labels(COND, [], T(np.array([[0.5, 0.5005, 0]], np.float32)), 1),
                                  np.float32([[0.5, 0.5005, 0]]))  # within the tolerance of 1e-3
    refused(lambda: v.labels(COND, [], T(y[0]), 2), "soft_labels.shape", "must be [1, 3] or [2, 3], got [3]")
    refused(lambda: v.labels(COND, [], T(y[:1, :2]), 1), "soft_labels.shape", "must be [3] or [1, 3], got [1, 2]")
    refused(lambda: v.labels(COND, [], T(y), 3), "soft_labels.shape", "must be [1, 3] or [3, 3], got [2, 3]")
    refused(lambda: v.labels(COND, [], T(np.ones((3, 3), np.float32) / 3), 2), "soft_labels.shape",
            "9 elements exceed the limit of 6")
    refused(lambda: v.labels(COND, [], T(np.array([[-0.5, 1.5, 0]], np.float32)), 1, prefix="e."),
            "e.soft_labels.data", "probabilities must be non-negative")
    refused(lambda: v.labels(COND, [], T(np.array([[1, 0, 0], [0.5, 0.5011, 0]], np.float32)), 2),
            "soft_labels.data", "each row must sum to 1 (within 0.001); row 1 sums to 1.0011")
    refused(lambda: v.labels(COND, [], T(np.array([[0.5, 0.2, 0]], np.float32)), 1), "soft_labels.data",
            "each row must sum to 1 (within 0.001); row 0 sums to 0.7")
    hard_only = Model(ref="h@1", conditional=True, num_classes=3)
    refused(lambda: v.labels(hard_only, [], T(y), 2), "soft_labels", "h@1 does not take soft labels")


def test_images():
    m = Model()
    x = np.array([[[[-1, 0], [0.5, 1]]]], np.float32)
    np.testing.assert_array_equal(v.images(T(x), m, 2), x)
    np.testing.assert_array_equal(v.images(T(x + 0.002), m, 2), np.clip(x + 0.002, -1, 1))  # within 1e-3 x range
    np.testing.assert_array_equal(v.images(T(x[0]), m, 1, single=True), x)
    raw = np.array([[[[0, 255], [51, 102]]]], np.uint8)
    got = v.images(T(raw), m, 1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[[[-1, 1], [-0.6, -0.2]]]], rtol=0, atol=1e-6)
    refused(lambda: v.images(T(x), POINTS, 1), "images", "p@1 outputs points, not images")
    refused(lambda: v.images(T(x), Model(value_range=None), 1, "im"), "im", "m@1 outputs points, not images")
    refused(lambda: v.images(T(x.astype(np.int64)), m, 1), "images.dtype", "must be FLOAT32 or UINT8, got INT64")
    refused(lambda: v.images(T(np.zeros((3, 1, 2, 2), np.float32)), m, 2), "images.shape",
            "12 elements exceed the limit of 8")
    refused(lambda: v.images(T(np.zeros((1, 2, 2), np.float32)), m, 2), "images.shape",
            "must be [N, 1, 2, 2], got [1, 2, 2]")
    refused(lambda: v.images(T(np.zeros((2, 1, 2, 2), np.float32)), m, 2, single=True), "images.shape",
            "must be [1, 2, 2] or [1, ...], got [2, 1, 2, 2]")
    refused(lambda: v.images(T(np.zeros((1, 1, 2, 3), np.float32)), m, 2), "images.shape",
            "must be [N, 1, 2, 2], got [1, 1, 2, 3]")
    refused(lambda: v.images(T(np.zeros((0, 1, 2, 2), np.float32)), m, 2), "images.shape[0]",
            "must be at least 1, got 0")
    refused(lambda: v.images(T(x * np.float32(np.nan)), m, 1), "images.data", "must be finite (no NaN or Inf)")
    refused(lambda: v.images(T(x * 1.0021), m, 1), "images.data", "FLOAT32 values must be in the model's value "
            "range [-1, 1], got [-1.0021, 1.0021] (or send UINT8 0..255)")
    refused(lambda: v.images(T(x - 0.0021), m, 1), "images.data", "FLOAT32 values must be in the model's value "
            "range [-1, 1], got [-1.0021, 0.9979] (or send UINT8 0..255)")


@pytest.mark.parametrize("invertible, optimizable, want", [(True, True, "HYBRID"), (True, False, "ENCODER"),
                                                           (False, True, "OPTIMIZE")])
def test_inversion_method_default(invertible, optimizable, want):
    m = Model(caps={"invertible": invertible, "optimizable": optimizable})
    assert v.inversion_method(m, pb.INVERSION_METHOD_UNSPECIFIED) == want


def test_inversion_method_needs_its_graph():
    both = Model(caps={"invertible": True, "optimizable": True})
    assert [v.inversion_method(both, x) for x in (pb.ENCODER, pb.OPTIMIZE, pb.HYBRID)] == ["ENCODER", "OPTIMIZE",
                                                                                           "HYBRID"]
    enc, opt, neither = (Model(caps={"invertible": a, "optimizable": b}) for a, b in ((True, False), (False, True),
                                                                                        (False, False)))
    refused(lambda: v.inversion_method(neither, pb.INVERSION_METHOD_UNSPECIFIED, "how"), "how",
            "m@1 ships neither an encoder nor a generator_grad graph: it cannot be inverted", FailedPrecondition)
    refused(lambda: v.inversion_method(both, 42), "method", "unknown method 42")
    refused(lambda: v.inversion_method(opt, pb.ENCODER), "method",
            "ENCODER needs an encoder graph; m@1 has none (use OPTIMIZE)", FailedPrecondition)
    refused(lambda: v.inversion_method(neither, pb.HYBRID), "method",
            "HYBRID needs an encoder graph; m@1 has none", FailedPrecondition)
    refused(lambda: v.inversion_method(enc, pb.OPTIMIZE), "method",
            "OPTIMIZE needs a generator_grad graph; m@1 has none (use ENCODER)", FailedPrecondition)
    refused(lambda: v.inversion_method(enc, pb.HYBRID), "method",
            "HYBRID needs a generator_grad graph; m@1 has none (use ENCODER)", FailedPrecondition)
    refused(lambda: v.inversion_method(Model(caps={"invertible": False, "optimizable": False}), pb.OPTIMIZE),
            "method", "OPTIMIZE needs a generator_grad graph; m@1 has none", FailedPrecondition)


def test_edges_of_the_checks():
    """Each check exactly at its edge: an empty latent batch under any bound, a value exactly at the tolerance below
    the range, a tolerance-wide excursion clipped back on both sides, one soft row for n = 1, the worst row named
    whatever the other rows sum to, one label repeated for n = 2, a 1-D latent's element limit."""
    np.testing.assert_array_equal(v.bounded(np.zeros((0, 3), np.float32), "z", 0.5), np.zeros((0, 3)))
    wide = Model(value_range=(0.0, 1000.0))  # tolerance 1.0: lo - tol = -1 exactly in float32
    edge = np.array([[[[-1.0, 0], [500, 1001]]]], np.float32)
    got = v.images(T(edge), wide, 1)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [[[[0, 0], [500, 1000]]]])
    refused(lambda: v.images(T(edge - np.float32(0.001)), wide, 1), "images.data", "FLOAT32 values must be in the "
            "model's value range [0, 1000], got [-1.001, 1001] (or send UINT8 0..255)")
    low = np.array([[[[-1.0015, 0], [0.5, 1]]]], np.float32)
    got = v.images(T(low), Model(), 1)
    assert got.dtype == np.float32 and got.min() == -1.0
    refused(lambda: v.labels(COND, [], T(np.ones((2, 3), np.float32) / 3), 1), "soft_labels.shape",
            "6 elements exceed the limit of 3")
    refused(lambda: v.labels(COND, [], T(np.array([[1, 0, 0], [0.2, 0.2, 0.2]], np.float32)), 2), "soft_labels.data",
            "each row must sum to 1 (within 0.001); row 1 sums to 0.6")
    np.testing.assert_array_equal(v.labels(COND, [1], pb.Tensor(), 2), np.eye(3, dtype=np.float32)[[1, 1]])
    one = Model(latent_dim=1)
    refused(lambda: v.latents(T(np.zeros((3, 1), np.float32)), one, 2), "latents.shape", "3 elements exceed the limit "
            "of 2")


def test_row_sums_are_taken_in_float64():
    """A float32 row whose exact sum is 1.0010000253 (over the tolerance) though its float32 sum rounds to 1.0009999."""
    row = np.array([[0.24018142, 0.15066276, 0.08339548, 0.11761364, 0.00788001, 0.03458209, 0.18660271, 0.1800819]],
                   np.float32)
    assert row.sum(dtype=np.float64) - 1 > 1e-3 >= float(row.sum()) - 1
    eight = Model(ref="c@8", conditional=True, num_classes=8, caps={"soft_labels": True})
    refused(lambda: v.labels(eight, [], T(row), 1), "soft_labels.data",
            "each row must sum to 1 (within 0.001); row 0 sums to 1.001")
