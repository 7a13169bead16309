"""The CLI's malloc settings: on by default on glibc, off when opted out."""

from __future__ import annotations

import platform
import sys

import pytest

from dust.allocator import keep_large_allocations


def test_opting_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("DUST_MALLOC", "default")
    assert keep_large_allocations() is False


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_settings_take_on_glibc(monkeypatch):
    monkeypatch.delenv("DUST_MALLOC", raising=False)
    assert keep_large_allocations() is True
