"""The function registry: `App`, `@app.function` and `@app.map`. No I/O happens here."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from batchgate.errors import ConfigError, NotFound
from batchgate.models import FunctionKind
from batchgate.typeschema import signature_schemas

F = TypeVar("F", bound=Callable[..., Any])
ErrorMode = Literal["fail", "collect"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionInfo:
    """What a gateway needs to know about a function: everything but its code."""

    name: str
    kind: FunctionKind = FunctionKind.FUNCTION
    timeout_s: float = 60.0
    retries: int = 2
    chunk_size: int = 100
    batched: bool = False
    errors: ErrorMode = "fail"
    # JSON Schemas from the annotations (`{}`: any JSON value). The gateway checks a plain
    # function's body against `input_schema`; map items are not checked, so a map function's
    # is `{}`. `output_schema` describes a result (of a map function: one item's result).
    input_schema: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    output_schema: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["kind"] = self.kind.value
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> FunctionInfo:
        fields = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in doc.items() if k in fields}
        known["kind"] = FunctionKind(known.get("kind", "function"))
        return cls(**known)


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A registered function: its info plus the callable the executors run."""

    info: FunctionInfo
    fn: Callable[..., Any]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


class App:
    """A set of functions that batchgate can run, declared with decorators."""

    def __init__(self, name: str = "batchgate") -> None:
        self.name = name
        self._specs: dict[str, FunctionSpec] = {}

    def function(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
    ) -> Any:
        """Register a plain function: one JSON payload in, one JSON result out."""

        def register(f: F) -> F:
            input_schema, output_schema = signature_schemas(f)
            info = FunctionInfo(
                name=name or f.__name__,
                timeout_s=timeout,
                retries=retries,
                input_schema=input_schema,
                output_schema=output_schema,
            )
            self._add(FunctionSpec(info, f))
            return f

        return register(fn) if fn is not None else register

    def map(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        chunk_size: int = 100,
        batched: bool = False,
        errors: ErrorMode = "fail",
        timeout: float = 60.0,
        retries: int = 2,
    ) -> Any:
        """Register a map function: a batch of items in, one result per item, in order."""

        def register(f: F) -> F:
            info = FunctionInfo(
                name=name or f.__name__,
                kind=FunctionKind.MAP,
                timeout_s=timeout,
                retries=retries,
                chunk_size=chunk_size,
                batched=batched,
                errors=errors,
                output_schema=_item_result_schema(f, batched),
            )
            self._add(FunctionSpec(info, f))
            return f

        return register(fn) if fn is not None else register

    def _add(self, spec: FunctionSpec) -> None:
        info = spec.info
        if not _NAME_RE.match(info.name):
            raise ConfigError(f"function name {info.name!r} must match {_NAME_RE.pattern}")
        if info.name in self._specs:
            raise ConfigError(f"function {info.name!r} is registered twice")
        if info.timeout_s <= 0:
            raise ConfigError(f"{info.name}: timeout must be positive, got {info.timeout_s}")
        if info.retries < 0:
            raise ConfigError(f"{info.name}: retries must be >= 0, got {info.retries}")
        if info.chunk_size < 1:
            raise ConfigError(f"{info.name}: chunk_size must be >= 1, got {info.chunk_size}")
        if info.errors not in ("fail", "collect"):
            raise ConfigError(f"{info.name}: errors must be 'fail' or 'collect'")
        self._specs[info.name] = spec

    def spec(self, name: str) -> FunctionSpec:
        """The registered function called `name`; raises NotFound."""
        try:
            return self._specs[name]
        except KeyError:
            raise NotFound(f"no function named {name!r}") from None

    def registry(self) -> Registry:
        return Registry({name: spec.info for name, spec in self._specs.items()})


def _item_result_schema(fn: Callable[..., Any], batched: bool) -> dict[str, Any]:
    """The schema of one item's result: a batched function returns a list of them."""
    returns = signature_schemas(fn)[1]
    if batched:
        return returns.get("items", {}) if returns.get("type") == "array" else {}
    return returns


class Registry:
    """Function infos by name, from an imported App or from a published manifest."""

    def __init__(self, infos: Mapping[str, FunctionInfo]) -> None:
        self._infos = dict(infos)

    def get(self, name: str) -> FunctionInfo:
        """The function called `name`; raises NotFound."""
        try:
            return self._infos[name]
        except KeyError:
            raise NotFound(f"no function named {name!r}", function=name) from None

    def __iter__(self) -> Any:
        return iter(self._infos.values())

    def __len__(self) -> int:
        return len(self._infos)

    def manifest(self) -> list[dict[str, Any]]:
        return [info.to_json() for info in self._infos.values()]

    @classmethod
    def from_manifest(cls, docs: list[dict[str, Any]]) -> Registry:
        return cls({d["name"]: FunctionInfo.from_json(d) for d in docs})


def load_app(ref: str) -> App:
    """Import an App from `path/to/file.py[:attr]` or `package.module[:attr]` (attr: `app`)."""
    target, _, attr = ref.partition(":")
    attr = attr or "app"
    if target.endswith(".py") or "/" in target:
        module = _import_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"cannot import app module {target!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigError(f"{ref!r}: {attr!r} is not a batchgate.App (got {type(app).__name__})")
    return app


def _import_file(path: Path) -> Any:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"app file {str(path)!r} does not exist")
    module_name = f"batchgate_app_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load app file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    # Let the app import its sibling modules, as `python path/to/file.py` would.
    sys.path.insert(0, str(path.parent))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[module_name]
        raise
    return module
