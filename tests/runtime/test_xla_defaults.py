"""The XLA CPU settings the package starts JAX with, and the CPU device count setting."""

import os

import pytest

from benchmarks.runtime import xla_defaults


def test_configure_xla_cpu_appends_each_flag_once(monkeypatch):
    monkeypatch.delenv(xla_defaults.OPT_OUT_ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    first = xla_defaults.configure_xla_cpu()
    assert first.split() == [
        "--xla_force_host_platform_device_count=2",
        *xla_defaults.XLA_CPU_FLAGS,
    ]
    assert xla_defaults.configure_xla_cpu() == first
    own = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"  # a user's own
    monkeypatch.setenv("XLA_FLAGS", own)
    assert xla_defaults.configure_xla_cpu() == own
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv(xla_defaults.OPT_OUT_ENV, "1")
    assert xla_defaults.configure_xla_cpu() == ""
    assert not xla_defaults.defaults_enabled()


@pytest.mark.skipif(
    not xla_defaults.defaults_enabled()
    or not xla_defaults._jaxlib_at_least(xla_defaults.MIN_JAXLIB),
    reason="the package's XLA defaults are off",
)
def test_the_backend_runs_without_ynnpack_fusions():
    """The flags reached XLA (conftest imports the package before any JAX computation): a
    matmul + ReLU compiles to no YNNPACK fusion; under jaxlib 0.10's default it is one."""
    import jax
    import jax.numpy as jnp

    hlo = jax.jit(lambda a: jax.nn.relu(a @ a)).lower(jnp.ones((64, 64))).compile().as_text()
    assert "__ynn_fusion" not in hlo


def test_set_cpu_device_count_refuses_another_count_already_given(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert xla_defaults.cpu_device_count_in_env() is None
    xla_defaults.set_cpu_device_count(4)
    assert xla_defaults.cpu_device_count_in_env() == 4
    xla_defaults.set_cpu_device_count(4)  # the same count again: nothing added
    with pytest.raises(ValueError, match="conflicts with XLA_FLAGS, which sets .*=4"):
        xla_defaults.set_cpu_device_count(2)
    assert os.environ["XLA_FLAGS"].count(xla_defaults.DEVICE_COUNT_FLAG) == 1


def test_the_device_count_is_the_last_one_xla_reads(monkeypatch):
    flag = xla_defaults.DEVICE_COUNT_FLAG
    monkeypatch.setenv("XLA_FLAGS", f"{flag}=2 --xla_cpu_enable_fast_math=false {flag}=3")
    assert xla_defaults.cpu_device_count_in_env() == 3
    monkeypatch.setenv("XLA_FLAGS", f"{flag}=two")
    with pytest.raises(ValueError, match="not a positive integer"):
        xla_defaults.cpu_device_count_in_env()


def test_an_old_jaxlib_gets_no_flag_it_would_abort_on(monkeypatch):
    monkeypatch.delenv(xla_defaults.OPT_OUT_ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(xla_defaults, "_jaxlib_at_least", lambda version: False)
    assert xla_defaults.configure_xla_cpu() == ""


def test_importing_the_package_leaves_xla_flags_alone():
    """`import benchmarks` (and its library modules) changes no environment variable; the
    entry points and library users call `configure_xla_cpu` themselves."""
    import subprocess
    import sys

    code = (
        "import os; before = dict(os.environ); import benchmarks; "
        "from benchmarks.core import evaluator, protocols; "
        "from benchmarks.inference import classifiers; "
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items()); "
        "print(os.environ.get('XLA_FLAGS', '<unset>'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.pop(xla_defaults.OPT_OUT_ENV, None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "<unset>"
