"""``none``: keep every token (the uncompressed baseline through the same hook)."""

from __future__ import annotations

from fusion.errors import RetentionError
from fusion.pruners.base import Compressor
from fusion.pruners.registry import METHODS
from fusion.tokens import AVTokens, Selection


@METHODS.register("none")
class KeepAll(Compressor):
    """The identity: every audio and video token reaches the LLM (retention must be 1.0)."""

    name = "none"

    def __init__(self, retention: float = 1.0) -> None:
        if retention != 1.0:
            raise RetentionError(
                f"method 'none' keeps every token, so retention must be 1.0 (got {retention}); pick a compression "
                "method (e.g. 'uniform') to keep fewer"
            )
        self.retention = 1.0

    def select(self, tokens: AVTokens) -> Selection:
        return tokens.keep_all()
