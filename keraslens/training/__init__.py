"""What `LensCallback` keeps of a training run: the history and its log, alerts, TensorBoard.

- `history`: the per-layer rows, bands, alerts and errors, and `history.jsonl`;
- `alerts`: figure thresholds and the alerts raised when a layer crosses one;
- `tensorboard`: the same figures as `tf.summary` scalars and activation histograms.
"""
