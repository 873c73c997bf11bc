"""server.batcher.coalesce: the one rule that turns several requests' rows into a batch and back."""

import numpy as np

from server.batcher import coalesce


def test_rows_are_concatenated_in_order_and_each_request_gets_its_own_rows_back():
    parts = [{"z": np.full((n, 3), i, np.float32), "y": np.full((n, 2), 10 + i, np.float32)}
             for i, n in enumerate((2, 1, 4))]
    feeds, spans = coalesce(parts)
    assert feeds["z"].shape == (7, 3) and feeds["y"].shape == (7, 2)
    assert spans == [slice(0, 2), slice(2, 3), slice(3, 7)]  # by rows, not by request count
    out = feeds["z"][:, 0] * 100 + feeds["y"][:, 0]  # an "output" row per input row
    for i, span in enumerate(spans):
        np.testing.assert_array_equal(out[span], np.full(len(out[span]), i * 100 + 10 + i))


def test_a_single_request_is_not_copied():
    z = np.zeros((5, 4), np.float32)
    feeds, spans = coalesce([{"z": z}])
    assert feeds["z"] is z and spans == [slice(0, 5)]
