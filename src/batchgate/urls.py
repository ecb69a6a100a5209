"""Backend URLs: parse `scheme://…` strings and pick the module that serves a scheme."""

from __future__ import annotations

import importlib
from collections.abc import Collection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from batchgate.errors import ConfigError


def scheme_of(url: str) -> str:
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ConfigError(f"backend URL {url!r} has no scheme (expected e.g. sqlite:///path)")
    return scheme


def query_params(url: str, known: Collection[str]) -> dict[str, str]:
    """The URL's query string as a dict (last value wins); any name not in `known` is a
    ConfigError that lists the known ones."""
    params = dict(parse_qsl(urlsplit(url).query))
    unknown = set(params) - set(known)
    if unknown:
        expected = ", ".join(sorted(known))
        raise ConfigError(f"{url!r}: unknown parameter(s) {sorted(unknown)}; expected {expected}")
    return params


def local_path(url: str) -> Path:
    """The filesystem path of a `sqlite:///rel`, `sqlite:////abs` or `file:///abs` URL."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{url!r}: a local path URL has no host (use three slashes)")
    path = parts.path
    if parts.scheme == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db
        path = path[1:] if path.startswith("/") else path
    if not path or path == "/":
        raise ConfigError(f"{url!r} names no path")
    return Path(path)


def load_backend(port: str, url: str, backends: dict[str, str], **kwargs: Any) -> Any:
    """Import the module registered for the URL's scheme and call its `open(url, **kw)`."""
    scheme = scheme_of(url)
    module_name = backends.get(scheme)
    if module_name is None:
        known = ", ".join(f"{s}://" for s in sorted(backends))
        raise ConfigError(f"unknown {port} URL scheme {scheme!r} in {url!r}; expected {known}")
    module = importlib.import_module(module_name)
    return module.open(url, **kwargs)
