"""Builds, caches and loads the direct convolution kernel (`cpu_conv.cc`, see `cpu_conv.py`).

The kernel is compiled with g++ ($CXX) against `jax.ffi.include_dir()` at its first use in a
process and cached under ~/.cache/shiftbench (or $XDG_CACHE_HOME/shiftbench), keyed by the
source, the compiler, its flags and the jaxlib version.

Loading a library runs its code in the process, so a cached one is loaded only where no other
user can have written it: the cache directory and the library must belong to this user and be
writable by neither their group nor others. Where they are not, the kernel is built for this
process alone in a private temporary directory (with a warning that says why). A compilation
that runs past BUILD_TIMEOUT_S is stopped; the temporary files that killed builds leave in the
cache are removed by the next build.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

import jax
from absl import logging

SOURCE = Path(__file__).with_name("cpu_conv.cc")
CXX_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 300.0  # g++ takes about 30 s on two busy cores
STALE_BUILD_S = 1800.0  # a temporary build file this old belongs to no running build
_TEMPORARY = "tmp*.so"  # the names mkstemp gives the files that builds write


class UntrustedCacheError(RuntimeError):
    """The cache directory or the library in it may have been written by another user."""


def _compiler() -> str:
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if not compiler:
        raise RuntimeError("no C++ compiler: set CXX or install g++")
    return compiler


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "shiftbench"


def _library_path(compiler: str) -> Path:
    """Where the built kernel lives: keyed by source, compiler, flags and jaxlib version."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join((compiler, *CXX_FLAGS, metadata.version("jaxlib"))).encode())
    return _cache_dir() / f"cpu_conv-{key.hexdigest()[:16]}.so"


def _untrusted(path: Path) -> str | None:
    """Why code at `path` is not safe to load (None where it is): it must belong to this user,
    and neither its group nor others may write to it."""
    info = path.stat()
    if info.st_uid != os.getuid():
        return f"{path} belongs to user {info.st_uid}, not to this user ({os.getuid()})"
    if info.st_mode & 0o022:
        return f"{path} is writable by its group or others (mode {info.st_mode & 0o777:o})"
    return None


def _remove_stale_builds(directory: Path) -> None:
    """Removes the temporary files of builds killed before they could (older than
    STALE_BUILD_S, so never the file of a build still running)."""
    cutoff = time.time() - STALE_BUILD_S
    for stale in directory.glob(_TEMPORARY):
        with contextlib.suppress(FileNotFoundError):  # another process removed it first
            if stale.stat().st_mtime < cutoff:
                stale.unlink()


def _compile(compiler: str, path: Path) -> None:
    """Compiles SOURCE into `path`, under a temporary name in its directory renamed at the end:
    concurrent processes never load half a file."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    cmd = [*shlex.split(compiler), *CXX_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE)]
    try:
        done = subprocess.run(
            [*cmd, "-o", tmp], capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o755 & ~umask)  # mkstemp made it private; the cache may be shared
        os.replace(tmp, path)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{' '.join(cmd)} timed out after {BUILD_TIMEOUT_S:g} s") from e
    except OSError as e:  # the compiler could not be started
        raise RuntimeError(f"{' '.join(cmd)} failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(directory: Path | None = None) -> Path:
    """Compiles `cpu_conv.cc` into `directory` (None: the cache), unless its build is there
    already, and returns the library's path.

    Raises:
      UntrustedCacheError: the directory, or the library already in it, belongs to another
        user or is writable by its group or others (see the module docstring).
      RuntimeError: no C++ compiler ($CXX or g++), or the compilation failed (with its output)
        or ran past BUILD_TIMEOUT_S seconds.
    """
    compiler = _compiler()
    path = _library_path(compiler)
    if directory is not None:
        path = directory / path.name
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    problem = _untrusted(path.parent) or (_untrusted(path) if path.exists() else None)
    if problem:
        raise UntrustedCacheError(problem)
    if not path.exists():
        _remove_stale_builds(path.parent)
        _compile(compiler, path)
    return path


def load() -> ctypes.CDLL:
    """The kernel's library loaded into this process: the cached build (built if missing), or,
    where the cache is not safe to load from, a build in a private temporary directory (removed
    once loaded), with a warning.

    Raises:
      RuntimeError: the library could not be built (see `build`).
      OSError: the library could not be loaded.
    """
    try:
        return ctypes.CDLL(str(build()))
    except UntrustedCacheError as e:
        logging.warning("cpu_conv: building the kernel for this process alone, not cached: %s", e)
    with tempfile.TemporaryDirectory(prefix="shiftbench-") as private:  # mode 0700
        return ctypes.CDLL(str(build(Path(private))))
