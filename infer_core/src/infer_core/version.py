"""The version of infer-core and of the plugin API it provides."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("infer-core")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# The plugin API a plugin declares with ``INFER_PLUGIN_API = 1`` in its plugin module. It is
# bumped when a hook or an extension-point interface changes incompatibly.
PLUGIN_API_VERSION = 1
