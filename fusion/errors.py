"""One exception hierarchy for av-fusion.

Every error a user can cause (bad retention, unknown method, malformed inputs, bad media, bad config,
mismatched adapter) is an :class:`AVFusionError`. Each message says what was wrong and what to do.
The subclasses also derive from the closest built-in type (``ValueError``, ``FileNotFoundError``, ...)
so that callers who catch built-ins keep working.
"""

from __future__ import annotations


class AVFusionError(Exception):
    """Base class of every error raised on purpose by av-fusion."""


class RetentionError(AVFusionError, ValueError):
    """A retention (fraction of tokens KEPT) outside (0, 1], or not a finite number."""


class UnknownMethodError(AVFusionError, ValueError):
    """A compression method name that is not in the registry."""


class DuplicateMethodError(AVFusionError, ValueError):
    """Two methods registered under the same name."""


class MethodConfigError(AVFusionError, ValueError):
    """A method parameter that the method does not know, or a value outside its range."""


class InputMismatchError(AVFusionError, ValueError):
    """Model inputs that contradict each other (placeholder counts vs features, shapes, grids)."""


class ContextLengthError(InputMismatchError):
    """A sample whose token sequence (text + video + audio) is longer than the model's context."""


class NonFiniteFeaturesError(AVFusionError, ValueError):
    """NaN or Inf in the encoders' outputs or in the inputs themselves."""


class MissingModalityError(AVFusionError, ValueError):
    """A method needs a modality (e.g. audio) that the input does not have."""


class SelectionError(AVFusionError, RuntimeError):
    """A compressor returned a selection that breaks the contract (drops text, wrong shape)."""


class UnsupportedOptionError(AVFusionError, ValueError):
    """An option the in-LLM hook path cannot honour (a sampling/beam generate option, FlashAttention, ...)."""


class ConfigError(AVFusionError, ValueError):
    """A recipe/eval config with an unknown key or an invalid value (the message names the dotted key)."""


class AdapterMismatchError(AVFusionError, ValueError):
    """An adapter trained on another backbone (different size or architecture) than the one it is loaded onto."""


class UnsafeWeightsError(AVFusionError, ValueError):
    """A file that would have to be unpickled (``.bin``/``.pt``/``.pkl``, or a pickle a weights-only load refuses)
    where av-fusion only reads safetensors and JSON; nothing in it was loaded."""


class ModelLoadError(AVFusionError, OSError):
    """A model name or path that cannot be resolved or loaded."""


class MediaError(AVFusionError):
    """Base class for problems with a media file; the message names the file."""


class MediaNotFoundError(MediaError, FileNotFoundError):
    """The media file does not exist."""


class CorruptMediaError(MediaError, ValueError):
    """The media file cannot be opened or decoded."""


class NoVideoStreamError(MediaError, ValueError):
    """The media file has no video stream."""


class EmptyMediaError(MediaError, ValueError):
    """The media file (or the requested clip) has zero length."""


class DatasetError(AVFusionError, ValueError):
    """A benchmark file that does not follow its documented layout."""


class BenchmarkError(AVFusionError, ValueError):
    """A benchmark helper given inconsistent inputs (unequal paired samples, a table row of the wrong width)."""


class RunFileError(AVFusionError, ValueError):
    """A run's own append-only file (``samples.jsonl``, ``metrics.jsonl``) damaged in a way no crash explains: a bad
    line before the last one. The message names the file and the line."""
