"""Shared test fixtures: the reference test vectors in ../shared/reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE_DIR = Path(os.environ.get("DUST_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def run_in(folder: Path, argv: list[str]) -> int:
    """``dust ARGV`` run in ``folder`` (in this process); returns the exit code."""
    from dust.cli import main

    old = os.getcwd()
    os.chdir(folder)
    try:
        return main(argv)
    finally:
        os.chdir(old)


def reference_case(name: str) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(constructor config, state dict, inputs/outputs) of one reference vector."""
    if not (REFERENCE_DIR / f"{name}.json").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"reference vectors not found in {REFERENCE_DIR}")
        pytest.skip(f"reference vectors not found in {REFERENCE_DIR} (set DUST_REFERENCE_DIR)")
    config = json.loads((REFERENCE_DIR / f"{name}.json").read_text())
    with np.load(REFERENCE_DIR / f"{name}.weights.npz") as w, np.load(REFERENCE_DIR / f"{name}.io.npz") as io:
        return config, dict(w), dict(io)
