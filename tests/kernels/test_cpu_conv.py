"""The direct CPU convolution kernel (benchmarks/kernels/cpu_conv.py, cpu_conv.cc, build.py):
against XLA's convolution and a numpy loop, under jit / vmap / 8 sharded devices, its errors, its
build and cache (what it loads and what it refuses), its fallbacks, and the fast path's use of it
(the same logits as the plain models in every padding and stride mode)."""

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks.inference import classifiers, fastpath
from benchmarks.kernels import build, cpu_conv
from models import registry
from models.layers import conv

needs_kernel = pytest.mark.skipif(
    not cpu_conv.available(), reason="cpu_conv kernel unavailable (needs x86-64 AVX-512 and g++)"
)
needs_compiler = pytest.mark.skipif(not shutil.which("g++"), reason="needs g++")


def _arrays(n, h, w, cin, cout, k, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, cin), np.float32)
    kernel = rng.standard_normal((*k, cin, cout), np.float32) / np.sqrt(k[0] * k[1] * cin)
    bias = rng.standard_normal(cout, np.float32)
    return x, kernel, bias


def _xla(x, kernel, bias, stride, dilation, pads, relu):
    y = (
        lax.conv_general_dilated(
            x,
            kernel,
            (stride, stride),
            pads,
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + bias
    )
    return np.maximum(y, 0) if relu else np.asarray(y)


def _hlo(fn, *args):
    return jax.jit(fn).lower(*args).compile().as_text()


# (n, h, w, cin, cout, (kh, kw), stride, dilation, pads, relu): every channel blocking
# (16 / 32 / 48 / 64 / 80 output channels), tail tiles (odd widths), asymmetric and large
# pads, stride 2 with dilation, 1x1 and 7x1 kernels, one-pixel maps, Cin of 1 and 3.
CASES = [
    (2, 32, 32, 16, 16, (3, 3), 1, 1, ((1, 1), (1, 1)), False),
    (3, 17, 13, 5, 32, (3, 3), 2, 1, ((1, 1), (1, 1)), True),
    (2, 12, 31, 16, 48, (3, 3), 1, 2, ((2, 2), (2, 2)), False),
    (1, 9, 9, 7, 64, (7, 7), 2, 1, ((3, 3), (3, 3)), True),
    (2, 10, 10, 24, 80, (3, 3), 1, 4, ((4, 4), (4, 4)), True),
    (2, 8, 8, 3, 16, (1, 1), 1, 1, ((0, 0), (0, 0)), False),  # pointwise: flat rows 48+48+32
    (1, 3, 5, 7, 32, (1, 1), 1, 1, ((0, 0), (0, 0)), True),  # pointwise: 15 pixels, one row
    (2, 7, 7, 16, 64, (1, 1), 2, 1, ((0, 0), (0, 0)), True),  # strided 1x1: not flat
    (2, 11, 6, 8, 32, (7, 1), 1, 1, ((3, 3), (0, 0)), False),
    (2, 7, 9, 4, 16, (3, 3), 1, 1, ((0, 2), (2, 0)), True),
    (1, 1, 1, 1, 16, (3, 3), 1, 1, ((1, 1), (1, 1)), False),
    (2, 16, 40, 32, 128, (3, 3), 1, 1, ((0, 0), (0, 0)), True),
    (2, 9, 9, 16, 32, (3, 3), 3, 2, ((5, 0), (0, 5)), False),
    (1, 1, 1, 4, 16, (1, 1), 3, 1, ((0, 0), (5, 0)), False),  # rows all left padding
    (2, 3, 4, 2, 16, (2, 2), 4, 1, ((6, 6), (7, 2)), True),
]


@needs_kernel
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_xla_convolution(case):
    n, h, w, cin, cout, k, stride, dilation, pads, relu = case
    x, kernel, bias = _arrays(n, h, w, cin, cout, k)
    fn = jax.jit(lambda x, k, b: cpu_conv.conv2d(x, k, b, stride, dilation, pads, relu))
    got = np.asarray(fn(x, kernel, bias))
    expected = _xla(x, kernel, bias, stride, dilation, pads, relu)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert "shiftbench_conv2d" in _hlo(fn, x, kernel, bias)  # the kernel computed it


@needs_kernel
@pytest.mark.parametrize("relu, k", [(False, 3), (True, 3), (True, 1)])
def test_residual_is_added_before_the_relu(relu, k):
    """k = 1: a pointwise conv, whose 297 pixels the kernel takes as flat rows of 48 (+ 9)."""
    x, kernel, bias = _arrays(3, 9, 11, 8, 48, (k, k))
    pads = ((k // 2, k // 2), (k // 2, k // 2))
    residual = np.random.default_rng(5).standard_normal((3, 9, 11, 48), np.float32)
    fn = jax.jit(lambda x, r: cpu_conv.conv2d(x, kernel, bias, 1, 1, pads, relu, residual=r))
    expected = _xla(x, kernel, bias, 1, 1, pads, False) + residual
    expected = np.maximum(expected, 0) if relu else expected
    np.testing.assert_allclose(fn(x, residual), expected, rtol=1e-5, atol=1e-5)
    assert 'custom_call_target="shiftbench_conv2d_residual"' in _hlo(fn, x, residual)
    # vmap over x and the residual together, and over the residual alone.
    both = jax.vmap(fn)(x[None].repeat(2, 0), residual[None].repeat(2, 0))
    np.testing.assert_allclose(both[1], expected, rtol=1e-5, atol=1e-5)
    alone = jax.vmap(lambda r: fn(x, r))(np.stack([residual, 0 * residual]))
    np.testing.assert_allclose(alone[0], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"residual must be float32\[3, 9, 11, 48\]"):
        cpu_conv.conv2d(x, kernel, bias, 1, 1, pads, relu, residual=residual[:, :8])


@needs_kernel
@pytest.mark.parametrize(
    "n, h, w, k, stride, dilation, pads",
    [
        (2, 8, 8, 3, 1, 1, ((1, 1), (1, 1))),
        (2, 9, 7, 3, 2, 1, ((1, 1), (1, 1))),
        (1, 6, 6, 3, 1, 4, ((4, 4), (4, 4))),  # dilated: wraps over 2/3 of the map
        (2, 3, 4, 3, 1, 1, ((5, 2), (0, 6))),  # pads larger than the map: wraps twice
    ],
)
def test_circular_padding_wraps_the_map(n, h, w, k, stride, dilation, pads):
    x, kernel, bias = _arrays(n, h, w, 5, 32, (k, k))
    fn = jax.jit(
        lambda x: cpu_conv.conv2d(x, kernel, bias, stride, dilation, pads, padding_mode="circular")
    )
    wrapped = np.pad(x, ((0, 0), *pads, (0, 0)), mode="wrap")  # numpy, independent of jax
    expected = _xla(wrapped, kernel, bias, stride, dilation, ((0, 0), (0, 0)), False)
    np.testing.assert_allclose(fn(x), expected, rtol=1e-5, atol=1e-5)
    assert "shiftbench_conv2d" in _hlo(fn, x)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        cpu_conv.conv2d(x, kernel, bias, padding_mode="reflect")


@needs_kernel
def test_kernel_matches_a_numpy_loop():
    """Independent of XLA: the definition as a loop over output pixels, in float64."""
    x, kernel, bias = _arrays(2, 6, 7, 3, 16, (3, 2), seed=3)
    stride, dilation, (pt, pb), (pl, pr) = 2, 2, (2, 1), (1, 3)
    got = np.asarray(cpu_conv.conv2d(x, kernel, bias, stride, dilation, ((pt, pb), (pl, pr))))
    xp = np.pad(x.astype(np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = (6 + pt + pb - dilation * 2 - 1) // stride + 1
    ow = (7 + pl + pr - dilation * 1 - 1) // stride + 1
    expected = np.zeros((2, oh, ow, 16))
    for i in range(oh):
        for j in range(ow):
            patch = xp[
                :,
                i * stride : i * stride + 2 * dilation + 1 : dilation,
                j * stride : j * stride + dilation + 1 : dilation,
            ]
            expected[:, i, j] = np.einsum("nhwc,hwco->no", patch, kernel) + bias
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_batched_looped_and_vmapped_agree_and_one_compile():
    x, kernel, bias = _arrays(6, 10, 10, 8, 32, (3, 3))
    pads = ((1, 1), (1, 1))
    fn = jax.jit(lambda x, k, b: cpu_conv.conv2d(x, k, b, 1, 1, pads, True))
    batched = np.asarray(fn(x, kernel, bias))
    looped = np.concatenate([np.asarray(fn(x[i : i + 1], kernel, bias)) for i in range(6)])
    np.testing.assert_array_equal(looped, batched)  # rows are independent: bit for bit
    other = fn(x, kernel * 2, bias - 1)  # new values, same shapes: no new compile
    assert fn._cache_size() == 2  # batch 6 and batch 1
    np.testing.assert_allclose(other, _xla(x, kernel * 2, bias - 1, 1, 1, pads, True), atol=1e-4)
    vmapped = jax.jit(jax.vmap(lambda x: cpu_conv.conv2d(x, kernel, bias, 1, 1, pads, True)))
    np.testing.assert_array_equal(
        vmapped(x.reshape(2, 3, *x.shape[1:])).reshape(batched.shape), batched
    )
    kernels = np.stack([kernel, -kernel])  # vmap over the kernel: XLA's convolution
    per_kernel = jax.jit(jax.vmap(lambda k: cpu_conv.conv2d(x, k, bias, 1, 1, pads, True)))
    np.testing.assert_allclose(
        per_kernel(kernels)[1], _xla(x, -kernel, bias, 1, 1, pads, True), rtol=1e-5, atol=1e-5
    )


def test_unsupported_convolutions_and_bad_pads():
    x, kernel, bias = _arrays(2, 8, 8, 4, 10, (3, 3))  # Cout 10: not a multiple of 16
    assert not cpu_conv.supports(x, kernel)
    assert not cpu_conv.supports(x.astype(np.float16), _arrays(1, 1, 1, 4, 16, (3, 3))[1])

    def fn(x, k, b):
        return cpu_conv.conv2d(x, k, b, 1, 1, ((1, 1), (1, 1)))

    assert "shiftbench_conv2d" not in _hlo(fn, x, kernel, bias)
    np.testing.assert_allclose(
        jax.jit(fn)(x, kernel, bias),
        _xla(x, kernel, bias, 1, 1, ((1, 1), (1, 1)), False),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="pads must be >= 0"):
        cpu_conv.conv2d(x, kernel, bias, 1, 1, ((-1, 0), (0, 0)))


@pytest.mark.parametrize("k", [(1, 0), (0, 3)])
def test_a_kernel_without_taps_is_refused(k):
    """lax cannot lower a zero-size window either; the kernel would read a negative row width."""
    x, kernel = np.ones((4, 64, 1, 3), np.float32), np.ones((*k, 3, 16), np.float32)
    assert not cpu_conv.supports(x, kernel)
    with pytest.raises(ValueError, match=r"kernel must be .* kh, kw >= 1, got \[.*, 3, 16\]"):
        cpu_conv.conv2d(x, kernel, 0.0, stride=10, dilation=2, pads=((0, 0), (1, 0)))


@pytest.mark.parametrize(
    "x_shape, k, stride, dilation",
    [((1, 1, 5, 3), (7, 3), 1, 1), ((2, 3, 3, 3), (5, 5), 2, 1), ((1, 4, 4, 3), (3, 3), 1, 3)],
)
def test_a_map_smaller_than_the_kernel_gives_an_empty_output(x_shape, k, stride, dilation):
    x, kernel, bias = _arrays(*x_shape, 16, k)
    expected = _xla(x, kernel, bias, stride, dilation, ((0, 0), (0, 0)), False)
    assert 0 in expected.shape
    fn = jax.jit(lambda x, r: cpu_conv.conv2d(x, kernel, bias, stride, dilation, residual=r))
    np.testing.assert_array_equal(fn(x, np.zeros_like(expected)), expected)


_SUBPROCESS = """
import json, sys
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import benchmarks
from benchmarks.kernels import cpu_conv
rng = np.random.default_rng(0)
x = rng.standard_normal((16, 12, 12, 8), np.float32)
k = rng.standard_normal((3, 3, 8, 32), np.float32)
b = rng.standard_normal(32, np.float32)
fn = jax.jit(lambda x, k, b: cpu_conv.conv2d(x, k, b, 1, 1, ((1, 1), (1, 1)), True))
mesh = Mesh(np.array(jax.devices()), ("batch",))
xs = jax.device_put(x, NamedSharding(mesh, P("batch")))
y = fn(xs, k, b)
hlo = fn.lower(xs, k, b).compile().as_text()
mapped = jax.jit(jax.shard_map(
    lambda x: cpu_conv.conv2d(x, k, b, 1, 1, ((1, 1), (1, 1)), True),
    mesh=mesh, in_specs=P("batch"), out_specs=P("batch")))(xs)
print(json.dumps({"available": cpu_conv.available(), "devices": jax.device_count(),
                  "y": np.asarray(y).tolist(), "spec": str(y.sharding.spec),
                  "custom_call": [l for l in hlo.splitlines() if "shiftbench_conv2d" in l],
                  "all_gather": "all-gather" in hlo, "shard_map": np.asarray(mapped).tolist()}))
"""


def _subprocess_expected():
    """XLA's convolution of the arrays that _SUBPROCESS draws."""
    rng = np.random.default_rng(0)
    x, kernel, bias = (
        rng.standard_normal(s, np.float32) for s in ((16, 12, 12, 8), (3, 3, 8, 32), (32,))
    )
    return _xla(x, kernel, bias, 1, 1, ((1, 1), (1, 1)), True)


def _subprocess(code=_SUBPROCESS, *args, **env):
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_kernel
def test_eight_devices_each_convolve_their_own_images():
    got = _subprocess(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert got["available"] and got["devices"] == 8
    expected = _subprocess_expected()
    np.testing.assert_allclose(got["y"], expected, rtol=1e-5, atol=1e-4)
    assert "batch" in got["spec"]  # the output stays sharded over the batch
    # Each device runs the kernel on its 2 of the 16 images; no device gathers the batch.
    assert len(got["custom_call"]) == 1 and "f32[2,12,12,32]" in got["custom_call"][0]
    assert not got["all_gather"]
    np.testing.assert_allclose(got["shard_map"], expected, rtol=1e-5, atol=1e-4)  # per device


def test_opting_out_gives_xla_convolution():
    got = _subprocess(SHIFTBENCH_CPU_CONV="0")
    assert not got["available"] and got["custom_call"] == []
    np.testing.assert_allclose(got["y"], _subprocess_expected(), rtol=1e-5, atol=1e-4)


_BAD_CALL = """
import json, sys
import numpy as np
from benchmarks.kernels import build, cpu_conv
cpu_conv._register(build.load())
x, k, stride, dilation, pads = json.loads(sys.argv[1])
args = np.ones(x, np.float32), np.ones(k, np.float32), np.zeros(k[-1], np.float32), None
try:
    cpu_conv._kernel_call(*args, stride, dilation, pads, False, False).block_until_ready()
    print(json.dumps({"error": None}))
except Exception as e:
    print(json.dumps({"error": str(e)}))
"""


@needs_compiler
def test_the_kernel_refuses_a_kernel_without_taps():
    """Called directly (past conv2d's checks), kw = 0 is an error, not a negative-size buffer's
    std::length_error that aborted the process (on any CPU: shapes are checked first)."""
    got = _subprocess(
        _BAD_CALL, json.dumps([(4, 64, 1, 3), (1, 0, 3, 16), 10, 2, ((0, 0), (1, 0))])
    )
    assert "shiftbench_conv2d: w must be at least 1x1, got 1x0" in got["error"]


@needs_kernel
def test_an_exception_in_a_worker_is_an_error():
    """A row whose buffer cannot be allocated (2^61 + 1 padded columns: std::length_error) on
    XLA's pool threads: the call fails with the exception's message; the process lives on."""
    got = _subprocess(
        _BAD_CALL, json.dumps([(2, 1, 1, 1), (1, 1, 1, 16), 2**61, 1, ((0, 0), (0, 2**61))])
    )
    assert got["error"] is not None and "INTERNAL: shiftbench_conv2d: " in got["error"]


def test_cache_key_follows_the_source_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = build._library_path("g++")
    assert first.parent == tmp_path / "shiftbench"
    assert build._library_path("clang++") != first
    monkeypatch.setattr(build, "CXX_FLAGS", (*build.CXX_FLAGS, "-DX"))
    assert build._library_path("g++") != first


@pytest.mark.parametrize("compiler", ["false", "/nonexistent/g++"])
def test_failed_build_names_the_compiler_output(monkeypatch, tmp_path, compiler):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", compiler)  # fails, or cannot be started
    with pytest.raises(RuntimeError, match="failed"):
        build.build()
    assert not list((tmp_path / "shiftbench").iterdir())  # nothing half-built left


def test_a_hung_compiler_is_stopped_and_stale_builds_removed(monkeypatch, tmp_path):
    (cache := tmp_path / "shiftbench").mkdir(mode=0o755)
    for name in ("tmpstale.so", "tmprecent.so"):  # as builds killed by a signal leave them
        (cache / name).touch()
    os.utime(cache / "tmpstale.so", (0, 0))  # 1970: older than STALE_BUILD_S
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", _script(tmp_path, "exec sleep 30"))
    monkeypatch.setattr(build, "BUILD_TIMEOUT_S", 0.5)
    with pytest.raises(RuntimeError, match=r"timed out after 0.5 s"):
        build.build()
    # The stale file went; the recent one may be a build still running; this one cleaned up.
    assert sorted(p.name for p in cache.iterdir()) == ["tmprecent.so"]


def _script(tmp_path, body: str) -> str:
    """An executable shell script in tmp_path running `body` (a stand-in compiler)."""
    path = tmp_path / "cxx.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _library(tmp_path, name: str, source: str) -> str:
    """A shared library compiled from C++ `source` in tmp_path."""
    src, out = tmp_path / f"{name}.cc", tmp_path / f"{name}.so"
    src.write_text(source)
    subprocess.run(["g++", "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return str(out)


@pytest.fixture
def planted(monkeypatch, tmp_path):
    """A library planted in the kernel's cache (private, mode 755), not the kernel: its
    constructor writes tmp_path / 'ran', and it has none of the handlers. CXX, a stand-in
    compiler, 'builds' a library with the one symbol `plain` (the kernel's stand-in)."""
    plain = _library(tmp_path, "plain", 'extern "C" int plain = 1;')
    ran = f'__attribute__((constructor)) static void ran() {{ fopen("{tmp_path}/ran", "w"); }}'
    planted = _library(tmp_path, "planted", f"#include <cstdio>\n{ran}\n")
    # The stand-in copies `plain` to its last argument, the output.
    monkeypatch.setenv("CXX", _script(tmp_path, f'for a; do out=$a; done; cp {plain} "$out"'))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = build._library_path(os.environ["CXX"])
    path.parent.mkdir(parents=True)
    path.parent.chmod(0o755)
    shutil.copy(planted, path)
    path.chmod(0o755)
    return path


@needs_compiler
def test_a_library_without_the_handlers_falls_back_once(monkeypatch, planted):
    warnings = []
    monkeypatch.setattr(cpu_conv.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    monkeypatch.delenv(cpu_conv.OPT_OUT_ENV, raising=False)
    monkeypatch.setattr(cpu_conv, "cpu_supported", lambda: True)
    monkeypatch.setattr(cpu_conv, "available", functools.cache(cpu_conv.available.__wrapped__))
    x, kernel, bias = _arrays(1, 5, 5, 3, 16, (3, 3))
    for _ in range(2):  # XLA's convolution, every time
        np.testing.assert_allclose(
            cpu_conv.conv2d(x, kernel, bias), _xla(x, kernel, bias, 1, 1, ((0, 0),) * 2, False)
        )
    assert not cpu_conv.available()
    assert len(warnings) == 1 and "ShiftbenchConv2d" in warnings[0]


@needs_compiler
@pytest.mark.parametrize("writable, mode", [("directory", 0o775), ("library", 0o757)])
def test_a_cache_others_can_write_is_not_loaded(monkeypatch, tmp_path, planted, writable, mode):
    """Writable by the group (the cache) or by anyone (the library): the planted library is not
    loaded (its constructor never runs); the kernel is built in a private directory instead,
    which is gone once it is loaded."""
    (planted.parent if writable == "directory" else planted).chmod(mode)
    warnings = []
    monkeypatch.setattr(build.logging, "warning", lambda msg, *a: warnings.append(msg % a))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "private"))
    (tmp_path / "private").mkdir()
    library = build.load()
    assert not (tmp_path / "ran").exists()
    assert library.plain  # the stand-in compiler's build
    assert not list((tmp_path / "private").iterdir())
    assert len(warnings) == 1 and "writable by its group or others" in warnings[0]


def test_a_cache_of_another_user_is_not_trusted(monkeypatch, tmp_path):
    assert build._untrusted(tmp_path) is None
    monkeypatch.setattr(os, "getuid", lambda: tmp_path.stat().st_uid + 1)
    assert "belongs to user" in build._untrusted(tmp_path)


# --- the fast path on the kernel ---------------------------------------------------------------


@needs_kernel
@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"padding": "circular"},
        {"stride_mode": "full"},
        {"stride_mode": "full", "padding": "circular"},
        {"stride_mode": "blur"},
    ],
)
def test_fast_path_on_the_kernel_matches_the_plain_model(fields):
    size = 16
    model = registry.build("resnet20", num_classes=10, **fields)
    variables = classifiers.random_variables(model, (size, size, 3))
    x = jnp.asarray(np.random.default_rng(1).random((3, size, size, 3), np.float32))
    plain = np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, x))
    logits, fast_variables = fastpath.prepare(model, variables, (size, size, 3))
    hlo = _hlo(logits, fast_variables, x)
    # Every 3x3 conv (19, all with Cout 16 / 32 / 64) runs on the kernel, none on XLA's, each
    # with its ReLU inside: the 10 of conv + BN + ReLU, the 9 of the blocks' outputs with the
    # residual add. No ReLU is left outside the kernel, and no unused call.
    assert hlo.count('custom_call_target="shiftbench_conv2d"') == 10
    assert hlo.count('custom_call_target="shiftbench_conv2d_residual"') == 9
    assert " convolution(" not in hlo
    assert " maximum(" not in hlo
    fast = np.asarray(jax.jit(logits)(fast_variables, x))
    scale = np.abs(plain).max()
    np.testing.assert_allclose(fast / scale, plain / scale, atol=2e-5)
    np.testing.assert_array_equal(fast.argmax(-1), plain.argmax(-1))
    off, v = fastpath.prepare(model, variables, (size, size, 3), fastpath.FastPath(cpu_conv=False))
    assert "shiftbench_conv2d" not in _hlo(off, v, x)
    np.testing.assert_allclose(jax.jit(off)(v, x) / scale, plain / scale, atol=2e-5)


class _SharedConv(nn.Module):
    """One conv applied twice, its BatchNorm on one of the outputs: nothing may be folded."""

    @nn.compact
    def __call__(self, x, train=False):
        shared = conv.Conv(16, 3)
        h = nn.BatchNorm(use_running_average=True)(shared(x))
        return conv.ReLU()(h, shared(2 * x)), {}


def test_shared_conv_is_not_folded_or_fused():
    model = _SharedConv()
    variables = classifiers.random_variables(model, (6, 6, 3))
    x = jnp.asarray(np.random.default_rng(2).random((2, 6, 6, 3), np.float32))
    assert fastpath.conv_batchnorm_pairs(model, variables, (6, 6, 3)) == ()
    logits, fast_variables = fastpath.prepare(model, variables, (6, 6, 3))
    plain = model.apply(variables, x)[0]
    np.testing.assert_allclose(jax.jit(logits)(fast_variables, x), plain, rtol=1e-5, atol=1e-5)


class _Pointwise(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return conv.Conv(16, 1, padding="VALID")(x), {}


def test_without_the_kernel_the_fast_path_keeps_its_dots(monkeypatch):
    """Where the kernel cannot run, a 1x1 conv stays a dot (not XLA's 1x1 convolution)."""
    model = _Pointwise()
    variables = classifiers.random_variables(model, (5, 5, 3))
    x = jnp.asarray(np.random.default_rng(3).random((2, 5, 5, 3), np.float32))
    monkeypatch.setattr(cpu_conv, "available", lambda: False)
    logits, fast_variables = fastpath.prepare(model, variables, (5, 5, 3))
    hlo = _hlo(logits, fast_variables, x)
    assert "shiftbench_conv2d" not in hlo and " convolution(" not in hlo and " dot(" in hlo
    np.testing.assert_allclose(
        jax.jit(logits)(fast_variables, x), model.apply(variables, x)[0], rtol=1e-5, atol=1e-6
    )


def test_identity_says_whether_the_kernel_computes():
    assert fastpath.identity(False) == {"fast": False, "cpu_conv": False}
    assert fastpath.identity(True) == {"fast": True, "cpu_conv": cpu_conv.in_use()}
