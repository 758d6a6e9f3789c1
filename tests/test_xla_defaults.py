"""The XLA CPU settings the package starts JAX with, and the CPU device count setting."""

import os

import pytest

from benchmarks import xla_defaults


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


@pytest.mark.skipif(not xla_defaults.defaults_enabled(), reason="SHIFTBENCH_NO_XLA_DEFAULTS set")
def test_the_package_starts_jax_with_its_xla_defaults():
    """Importing the package set the flags (conftest imports it before any JAX computation)."""
    names = {f.split("=")[0] for f in os.environ.get("XLA_FLAGS", "").split()}
    assert {f.split("=")[0] for f in xla_defaults.XLA_CPU_FLAGS} <= names


def test_set_cpu_device_count_keeps_a_count_already_given(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert xla_defaults.cpu_device_count_in_env() is None
    assert xla_defaults.set_cpu_device_count(4) == 4
    assert xla_defaults.cpu_device_count_in_env() == 4
    assert xla_defaults.set_cpu_device_count(2) == 4  # the first count stays
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
