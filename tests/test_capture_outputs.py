"""`Lens.capture_with_outputs`: the statistics and the model's outputs from one pass."""

from __future__ import annotations

import numpy as np

from keraslens import Lens


def test_outputs_equal_predict_and_stats_equal_capture(make_two_in_two_out, rng):
    model = make_two_in_two_out()
    x = [rng.normal(size=(50, 6)).astype("float32"), rng.normal(size=(50, 5)).astype("float32")]
    stats, outputs = Lens(model).capture_with_outputs(x, batch_size=16)
    expected = model.predict(x, verbose=0)
    assert len(outputs) == len(expected) == 2
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain = Lens(model).capture(x, batch_size=16)
    assert list(stats) == list(plain)
    for key, layer in plain.items():
        np.testing.assert_allclose(stats[key].mean, layer.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(stats[key].count, layer.count)
