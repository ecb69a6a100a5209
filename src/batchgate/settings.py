"""One frozen Settings object: CLI flag > BATCHGATE_* environment variable > default."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchgate.errors import ConfigError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
}  # fmt: skip
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str | int) -> int:
    """`100MB`, `64KiB`, `1048576` -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(f"{text!r} is not a size (examples: 100MB, 64KiB, 1048576)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str | float) -> float:
    """`900`, `1.5s`, `15m`, `24h`, `250ms` -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _DURATION_UNITS:
        raise ConfigError(f"{text!r} is not a duration (examples: 900, 1.5s, 15m, 24h)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{text!r} is not a boolean (use true or false)")


def _env(name: str) -> dict[str, Any]:
    return {"env": name}


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything a gateway or worker can be told. Each field names its environment variable."""

    data_dir: Path = dataclasses.field(default=Path(".batchgate"), metadata=_env("DATA_DIR"))
    queue_url: str = dataclasses.field(default="", metadata=_env("QUEUE"))
    state_url: str = dataclasses.field(default="", metadata=_env("STATE"))
    store_url: str = dataclasses.field(default="", metadata=_env("STORE"))
    host: str = dataclasses.field(default="127.0.0.1", metadata=_env("HOST"))
    port: int = dataclasses.field(default=8000, metadata=_env("PORT"))
    workers: int = dataclasses.field(default=0, metadata=_env("WORKERS"))
    max_wait_s: float = dataclasses.field(default=900.0, metadata=_env("MAX_WAIT"))
    max_body_bytes: int = dataclasses.field(default=100 * 10**6, metadata=_env("MAX_BODY"))
    max_items: int = dataclasses.field(default=10_000_000, metadata=_env("MAX_ITEMS"))
    max_queue_depth: int = dataclasses.field(default=100_000, metadata=_env("MAX_QUEUE_DEPTH"))
    api_keys: tuple[str, ...] = dataclasses.field(default=(), metadata=_env("API_KEYS"))
    insecure: bool = dataclasses.field(default=False, metadata=_env("INSECURE"))
    lease_s: float = dataclasses.field(default=30.0, metadata=_env("LEASE"))
    retry_backoff_s: float = dataclasses.field(default=1.0, metadata=_env("RETRY_BACKOFF"))
    retry_backoff_max_s: float = dataclasses.field(
        default=300.0, metadata=_env("RETRY_BACKOFF_MAX")
    )
    reread_s: float = dataclasses.field(default=2.0, metadata=_env("REREAD"))
    result_ttl_s: float = dataclasses.field(default=86400.0, metadata=_env("RESULT_TTL"))
    drain_s: float = dataclasses.field(default=30.0, metadata=_env("DRAIN"))
    body_timeout_s: float = dataclasses.field(default=300.0, metadata=_env("BODY_TIMEOUT"))
    inline_max_bytes: int = dataclasses.field(default=64 * 1024, metadata=_env("INLINE_MAX"))
    redirect_results: bool = dataclasses.field(default=False, metadata=_env("REDIRECT_RESULTS"))

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from explicit values (None = not given), then env, then defaults."""
        env = os.environ if env is None else env
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(overrides) - set(fields)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        by_env = {"BATCHGATE_" + f.metadata["env"]: f for f in fields.values()}
        unknown_env = {k for k in env if k.startswith("BATCHGATE_") and k not in by_env}
        if unknown_env:
            known = ", ".join(sorted(by_env))
            raise ConfigError(
                f"unknown environment variables {', '.join(sorted(unknown_env))}; known: {known}"
            )
        values: dict[str, Any] = {}
        for env_name, field in by_env.items():
            if field.name in overrides:
                values[field.name] = _convert(field, overrides[field.name])
            elif env_name in env:
                values[field.name] = _convert(field, env[env_name], env_name)
        settings = cls(**values)
        settings.validate()
        return settings.with_default_urls()

    def validate(self) -> None:
        if self.max_wait_s < 0 or self.lease_s <= 0 or self.reread_s <= 0:
            raise ConfigError("max-wait must be >= 0, and lease and reread intervals positive")
        if self.body_timeout_s <= 0:
            raise ConfigError("the body timeout must be positive")
        if self.max_body_bytes <= 0 or self.max_items <= 0:
            raise ConfigError("max-body and max-items must be positive")
        for key in self.api_keys:
            if not key.strip() or key != key.strip():
                raise ConfigError(
                    "an API key must not be empty, blank, or start or end with whitespace "
                    "(a client could never send it)"
                )

    def with_default_urls(self) -> Settings:
        """Fill unset backend URLs with the embedded defaults under `data_dir`."""
        root = self.data_dir.resolve()
        return dataclasses.replace(
            self,
            queue_url=self.queue_url or f"sqlite:///{root}/queue.db",
            state_url=self.state_url or f"sqlite:///{root}/state.db",
            store_url=self.store_url or f"file://{root}/store",
            workers=self.workers or (os.cpu_count() or 1),
        )


def _convert(field: dataclasses.Field[Any], value: Any, source: str | None = None) -> Any:
    where = source or field.name
    try:
        if field.name.endswith("_s"):
            return parse_duration(value)
        if field.name.endswith("_bytes"):
            return parse_size(value)
        if field.type in ("int",):
            return int(value)
        if field.type in ("bool",):
            return value if isinstance(value, bool) else _parse_bool(value)
        if field.type.startswith("tuple"):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(value)
        if field.type == "Path":
            return Path(value)
        return value
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a valid {field.type}") from None
