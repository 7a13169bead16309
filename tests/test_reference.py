"""The published models' outputs reproduce through from_reference and convert-reference."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import reference_case

from dust.checkpoint import load_checkpoint
from dust.cli import main
from dust.models import from_reference
from dust.models.ts_swin import shift_window_mask_1d

CASES = [("ts_swin_a", "ts"), ("ts_swin_a_fusion", "ts_fusion"), ("video_swin_a", "video")]


def _run(model, kind, io):
    x = torch.from_numpy(io["x"])
    with torch.no_grad():
        if kind == "ts_fusion":
            return model(x, torch.from_numpy(io["video_features"])), None
        return model(x), model.forward_features(x)


@pytest.mark.parametrize("name,kind", CASES)
def test_reference_logits_reproduce(name, kind):
    config, weights, io = reference_case(name)
    model = from_reference(kind, config, weights)
    assert not model.training
    logits, features = _run(model, kind, io)
    torch.testing.assert_close(logits, torch.from_numpy(io["logits"]), atol=1e-5, rtol=0)
    if "features" in io:
        torch.testing.assert_close(features, torch.from_numpy(io["features"]), atol=1e-5, rtol=0)


def test_reference_shift_masks_match_recorded_buffers():
    config, weights, _ = reference_case("ts_swin_a")
    model = from_reference("ts", config, weights)
    masks = {k: v for k, v in weights.items() if k.endswith("attn_mask")}
    assert masks
    for key, recorded in masks.items():
        stage, block = int(key.split(".")[1]), int(key.split(".")[3])
        attn = model.layers[stage].blocks[block].attn
        length = math.ceil(config["seq_len"] / 2**stage)
        mask = shift_window_mask_1d(length, attn.window_size, attn.shift_size, "reference")
        assert torch.equal(mask, torch.from_numpy(recorded)), key


def test_wrong_config_for_weights_is_refused():
    config, weights, _ = reference_case("ts_swin_a")
    with pytest.raises(RuntimeError, match="do not fit"):
        from_reference("ts", {**config, "embed_dim": 32}, weights)


@pytest.mark.parametrize("name,kind", CASES)
def test_convert_reference_cli_roundtrip(tmp_path, name, kind):
    config, weights, io = reference_case(name)
    import json

    import numpy as np

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    pth = tmp_path / "reference.pth"
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, pth)
    out = tmp_path / "converted.pth"
    assert main(["convert-reference", kind, str(cfg), str(pth), str(out)]) == 0
    model = load_checkpoint(out).build()
    logits, _ = _run(model, kind, io)
    torch.testing.assert_close(logits, torch.from_numpy(io["logits"]), atol=1e-5, rtol=0)
    np.savez(tmp_path / "reference.npz", **weights)
    assert main(["convert-reference", kind, str(cfg), str(tmp_path / "reference.npz"), str(out)]) == 0


def test_convert_reference_cli_bad_inputs(tmp_path, capsys):
    config, weights, _ = reference_case("ts_swin_a")
    import json

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    out = tmp_path / "out.pth"
    assert main(["convert-reference", "ts", str(cfg), str(garbage), str(out)]) == 2
    err = capsys.readouterr().err
    assert "garbage.pth" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["convert-reference", "ts", str(cfg), str(tmp_path / "missing.npz"), str(out)]) == 2
    assert "missing.npz" in capsys.readouterr().err
