"""`batchgate aws package`: the Lambda deployment zip for an app.

The zip holds, at its root: batchgate's own source (copied from the installed package), the
app (its file, or its module's top-level package), `batchgate-lambda.json` naming the app
and its functions, and unless `with_deps=False` the dependencies of batchgate (with the
`redis` and `aws` extras) and of an optional requirements file, installed by pip as
manylinux wheels for the Lambda runtime's Python and architecture.

When the Python building the zip is the runtime's own version, every module also goes in
compiled (`__pycache__/*.pyc`, unchecked-hash, so the zip's fixed timestamps do not make
them stale): Lambda's code directory is read-only, so without them every cold start
compiles every module it imports again.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import py_compile
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from batchgate.app import load_app
from batchgate.errors import ConfigError

Architecture = Literal["x86_64", "arm64"]

MANIFEST_NAME = "batchgate-lambda.json"
LAMBDA_PYTHON = "3.12"  # the template's python3.12 runtime
# manylinux2014 (glibc 2.17) wheels run on the python3.12 runtime's Amazon Linux 2023.
PLATFORMS = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}
EXTRAS = ("redis", "aws")
# Lambda's limit for a function's code and layers, unzipped (Lambda quotas page).
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
_SKIP_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same input gives the same zip


@dataclasses.dataclass(frozen=True, slots=True)
class PackageReport:
    """What went into a deployment zip."""

    path: Path
    app: str
    files: int
    unzipped_bytes: int
    zipped_bytes: int
    bytecode: bool = False


def batchgate_requirements() -> list[str]:
    """batchgate's own runtime requirements plus those of the `redis` and `aws` extras."""
    requirements = []
    for line in importlib.metadata.requires("batchgate") or []:
        spec, _, marker = line.partition(";")
        extra = marker.replace('"', "'").replace(" ", "")
        if not marker or any(extra == f"extra=='{name}'" for name in EXTRAS):
            requirements.append(spec.strip())
    return requirements


def pip_command(
    target: Path,
    arch: Architecture = "x86_64",
    requirements_file: Path | None = None,
    constraints_file: Path | None = None,
    python_version: str = LAMBDA_PYTHON,
) -> list[str]:
    """The pip call that installs the dependencies into `target` for the Lambda runtime."""
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(target), "--platform", PLATFORMS[arch], "--implementation", "cp",
        "--python-version", python_version, "--only-binary=:all:", "--upgrade",
        *batchgate_requirements(),
    ]  # fmt: skip
    if requirements_file is not None:
        command += ["-r", str(requirements_file)]
    if constraints_file is not None:
        command += ["-c", str(constraints_file)]
    return command


def _app_sources(app_ref: str) -> tuple[str, list[tuple[Path, str]]]:
    """(the app's ref inside the zip, [(source path, name in the zip)]) for `app_ref`."""
    target, _, attr = app_ref.partition(":")
    attr = attr or "app"
    if target.endswith(".py") or "/" in target:
        path = Path(target).resolve()
        return f"{path.stem}:{attr}", [(path, path.name)]
    top = target.split(".")[0]
    if top == "batchgate":
        return f"{target}:{attr}", []
    spec = importlib.util.find_spec(top)
    if spec is not None and spec.submodule_search_locations:  # a package: take all of it
        folder = Path(next(iter(spec.submodule_search_locations)))
        return f"{target}:{attr}", [(folder, top)]
    if spec is None or spec.origin is None:
        raise ConfigError(f"cannot find the app module {top!r}")
    return f"{target}:{attr}", [(Path(spec.origin), Path(spec.origin).name)]


def _walk(source: Path, name: str) -> Iterator[tuple[Path, str]]:
    if source.is_file():
        yield source, name
        return
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        skipped = _SKIP_PARTS.intersection(relative.parts) or path.suffix in (".pyc", ".pyo")
        if path.is_file() and not skipped:
            yield path, f"{name}/{relative.as_posix()}"


def build_package(
    app_ref: str,
    output: Path,
    *,
    requirements_file: Path | None = None,
    constraints_file: Path | None = None,
    arch: Architecture = "x86_64",
    with_deps: bool = True,
    include: tuple[Path, ...] = (),
    python_version: str = LAMBDA_PYTHON,
) -> PackageReport:
    """Write the deployment zip for `app_ref` (file.py[:attr] or module[:attr]) to `output`."""
    import batchgate

    if arch not in PLATFORMS:
        raise ConfigError(f"architecture must be x86_64 or arm64, got {arch!r}")
    registry = load_app(app_ref).registry()  # fails early if the app does not import
    zip_ref, app_files = _app_sources(app_ref)
    sources: list[tuple[Path, str]] = [(Path(batchgate.__file__).parent, "batchgate")]
    sources += app_files
    for extra in include:
        if not extra.exists():
            raise ConfigError(f"--include {str(extra)!r} does not exist")
        sources.append((extra.resolve(), extra.resolve().name))
    manifest = {
        "app": zip_ref,
        "batchgate": batchgate.__version__,
        "functions": registry.manifest(),
    }
    with tempfile.TemporaryDirectory(prefix="batchgate-package-") as tmp:
        deps = Path(tmp) / "deps"
        if with_deps:
            if not re.fullmatch(r"3\.\d+", python_version):
                raise ConfigError(f"python version must be like 3.12, got {python_version!r}")
            command = pip_command(deps, arch, requirements_file, constraints_file, python_version)
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise ConfigError(f"pip could not install the dependencies:\n{result.stderr}")
            for path in sorted(deps.iterdir()):
                # pip installs batchgate's scripts into bin/; Lambda needs none of them
                if path.name not in ("bin", "batchgate"):
                    sources.append((path, path.name))
        manifest_text = json.dumps(manifest, indent=2) + "\n"
        bytecode = python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
        return _write_zip(output, zip_ref, sources, manifest_text, bytecode)


def compiled(path: Path, name: str, scratch: Path) -> bytes | None:
    """`path` compiled by this Python as `name` (unchecked-hash pyc); None if it does not
    compile here (a template or another version's file that is never imported)."""
    cfile = scratch / "module.pyc"
    try:
        py_compile.compile(
            str(path),
            cfile=str(cfile),
            dfile=name,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    except (py_compile.PyCompileError, SyntaxError, ValueError):
        return None
    return cfile.read_bytes()


def _zip_entries(
    sources: list[tuple[Path, str]], bytecode: bool, scratch: Path
) -> Iterator[tuple[str, bytes]]:
    for source, top in sources:
        for path, name in _walk(source, top):
            yield name, path.read_bytes()
            if bytecode and name.endswith(".py"):
                pyc = compiled(path, name, scratch)
                if pyc is not None:
                    yield importlib.util.cache_from_source(name), pyc


def _write_zip(
    output: Path, app: str, sources: list[tuple[Path, str]], manifest: str, bytecode: bool
) -> PackageReport:
    output.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    unzipped = files = 0
    partial = output.with_name(output.name + ".partial")
    with (
        tempfile.TemporaryDirectory(prefix="batchgate-pyc-") as scratch,
        zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive,
    ):
        entries = _zip_entries(sources, bytecode, Path(scratch))
        for name, data in [*entries, (MANIFEST_NAME, manifest.encode())]:
            if name in seen:
                raise ConfigError(f"two files would be {name!r} in the zip")
            seen.add(name)
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16  # readable by the Lambda runtime's user
            archive.writestr(info, data)
            unzipped += len(data)
            files += 1
    if unzipped > MAX_UNZIPPED_BYTES:
        partial.unlink()
        raise ConfigError(
            f"{output} would unzip to {unzipped / 2**20:.0f} MiB; Lambda takes at most "
            f"{MAX_UNZIPPED_BYTES / 2**20:.0f} MiB (use a container image or fewer dependencies)"
        )
    partial.replace(output)
    return PackageReport(output, app, files, unzipped, output.stat().st_size, bytecode)
