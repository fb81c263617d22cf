"""Attention of `MultiHeadAttention` models: capture, head statistics and per-sample maps.

`keraslens.attention` is both this package and the capture function: calling the
package, `keraslens.attention(model, x)`, calls `attention(model, x)`.
"""

import sys
import types

from keraslens.attention.capture import AttentionCapture, attention, attention_layers
from keraslens.attention.maps import (
    attention_map,
    gradient_weighted,
    patch_heatmap,
    rollout,
    token_relevance,
)
from keraslens.attention.stats import HeadStats, batch_sums, head_statistics

__all__ = [
    "AttentionCapture",
    "HeadStats",
    "attention",
    "attention_layers",
    "attention_map",
    "batch_sums",
    "gradient_weighted",
    "head_statistics",
    "patch_heatmap",
    "rollout",
    "token_relevance",
]


class _CallablePackage(types.ModuleType):
    # Python binds a subpackage to its parent's attribute of the same name, so a function
    # `keraslens.attention` would be replaced by this package on its first import; the
    # package answers the call instead.
    def __call__(self, *args, **kwargs):
        return attention(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
