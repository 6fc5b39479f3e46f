"""The rule table: every family, in the order ``transcode rules`` prints them.

The engine reads ``registry.TABLE`` when it plans, so a test may swap in a changed table with
``monkeypatch.setattr(registry, "TABLE", registry.TABLE.replaced("Conv2d", ...))``.
"""
from __future__ import annotations

from .families import attention, conv, cudnn, dense, norm, prelu, recurrent, separable
from .table import RuleTable

TABLE = RuleTable([dense.LINEAR, *conv.CONVOLUTIONS, *conv.TRANSPOSED, *separable.FAMILIES,
                   *norm.FAMILIES, dense.EMBEDDING, prelu.PRELU, *recurrent.FAMILIES,
                   *cudnn.FAMILIES, *attention.FAMILIES])
