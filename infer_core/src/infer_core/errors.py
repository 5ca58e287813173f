"""The exceptions infer raises for things a user can fix.

Every message is a sentence that says what was wrong and what to do about it; tests assert
them word for word, so treat their wording as part of the API. Internal invariants use
``assert``; anything a user, a config file or a plugin author can cause raises one of these.
"""

from __future__ import annotations


class InferError(Exception):
    """Base class of every error infer raises on purpose."""


class ConfigError(InferError):
    """The configuration (file, environment, flags or plugin options) is invalid."""


class PluginError(InferError):
    """A plugin could not be loaded, registers something twice, or a name is unknown."""


class PluginLoadError(PluginError):
    """A plugin failed to import or was built for another plugin API version."""


class UnknownNameError(PluginError, LookupError):
    """A registry lookup by name found nothing."""


class DuplicateNameError(PluginError):
    """Two plugins (or one plugin twice) registered the same name."""


class RequestError(InferError, ValueError):
    """A request (prompt or sampling parameters) is invalid; other requests are unaffected."""


class ModelLoadError(InferError):
    """A model directory cannot be loaded: missing files, tensors or an unsupported format."""


class CudaSourceError(InferError):
    """A CUDA C++ kernel source did not compile, or cannot be compiled or launched here (no NVRTC,
    no driver, no GPU of the architecture it needs)."""
