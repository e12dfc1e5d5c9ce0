"""Avito AI API: serves A-Vibe (text) and A-Vision (image understanding) over HTTP."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("avito-ai")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
