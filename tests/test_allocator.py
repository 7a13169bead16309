"""The CLI's malloc modes: fast keeps freed buffers, lean returns them, default leaves glibc alone."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from dust.allocator import configure_malloc
from dust.cli import main
from dust.errors import InputError

glibc_only = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")


def test_default_mode_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("DUST_MALLOC", "default")
    assert configure_malloc() is False


def test_unknown_mode_is_a_clear_cli_error(monkeypatch, capsys):
    monkeypatch.setenv("DUST_MALLOC", "turbo")
    with pytest.raises(InputError, match="DUST_MALLOC='turbo'"):
        configure_malloc()
    assert main(["presets"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dust: error: DUST_MALLOC='turbo'") and "\n" not in err


# A child process: allocate and free 64 buffers of 4 MiB, then report the anonymous memory still held.
_HELD_AFTER_FREE = """
import sys, torch
from dust.allocator import configure_malloc
configure_malloc(sys.argv[1])
def anon_kib():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon'))
before = anon_kib()
buffers = [torch.ones(1 << 20) for _ in range(64)]
del buffers
print(anon_kib() - before)
"""


@glibc_only
@pytest.mark.parametrize("mode", ["fast", "lean"])
def test_fast_keeps_freed_buffers_and_lean_returns_them(mode):
    held_kib = int(subprocess.run([sys.executable, "-c", _HELD_AFTER_FREE, mode], check=True, capture_output=True,
                                  text=True).stdout)
    if mode == "fast":
        assert held_kib > 200 * 1024  # the 256 MiB stay in the heap for the next step
    else:
        assert held_kib < 32 * 1024


# A child process: the anonymous huge pages behind a fresh 64 MiB tensor, in KiB.
_HUGE_PAGES_BEHIND_BUFFER = """
import sys, torch
from dust.allocator import configure_malloc
configure_malloc(sys.argv[1])
def huge_kib():
    return next(int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages'))
before = huge_kib()
buffer = torch.ones(16 << 20)
print(huge_kib() - before)
"""


def _huge_pages_on_request() -> bool:
    """Whether the kernel gives transparent huge pages where a program asks (madvise), and only there."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            return "[madvise]" in setting.read()
    except OSError:
        return False


@glibc_only
@pytest.mark.skipif(not _huge_pages_on_request(), reason="transparent huge pages not in madvise mode")
@pytest.mark.parametrize(("mode", "env", "expect_huge"), [("lean", {}, True), ("fast", {}, False),
                                                          ("lean", {"THP_MEM_ALLOC_ENABLE": "0"}, False)])
def test_lean_backs_large_buffers_with_huge_pages_unless_told_not_to(mode, env, expect_huge, monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    huge_kib = int(subprocess.run([sys.executable, "-c", _HUGE_PAGES_BEHIND_BUFFER, mode], check=True,
                                  capture_output=True, text=True).stdout)
    assert (huge_kib >= 32 * 1024) is expect_huge, huge_kib
