"""DuST checkpoints: rebuild the model from the file alone, refuse what does not fit."""

from __future__ import annotations

import pytest
import torch

from dust.checkpoint import load_checkpoint, save_checkpoint
from dust.models import TimeSeriesSwin, VideoSwin, WeightsError

TS = dict(seq_len=19, in_chans=3, num_classes=4, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
          window_size=4)


def test_roundtrip_rebuilds_the_same_model(tmp_path):
    model = TimeSeriesSwin(**TS).eval()
    path = save_checkpoint(tmp_path / "m.pth", model, preset="custom", class_names=["a", "b", "c", "d"])
    ckpt = load_checkpoint(path, expect="ts")
    assert ckpt.preset == "custom" and ckpt.meta["class_names"] == ["a", "b", "c", "d"]
    assert ckpt.dust_version
    x = torch.randn(2, 3, 19)
    torch.testing.assert_close(ckpt.build()(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth"]  # no temporary files left


def test_wrong_kind_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pth", TimeSeriesSwin(**TS))
    with pytest.raises(WeightsError, match="holds a ts model, expected a video model"):
        load_checkpoint(path, expect="video")


def test_incompatible_format_version_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pth", TimeSeriesSwin(**TS))
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    payload["dust_version"] = "9.0.0"
    torch.save(payload, path)
    with pytest.raises(WeightsError, match="format 99 written by dust 9.0.0"):
        load_checkpoint(path)


def test_truncated_or_foreign_files_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pth", VideoSwin(num_classes=2, embed_dim=8, depths=(1, 1, 1, 1),
                                                        num_heads=(1, 1, 2, 2), window_size=(2, 4, 4)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"m.pth: cannot read checkpoint \(a damaged or truncated file\)"):
        load_checkpoint(path)
    text = tmp_path / "config.yaml"
    text.write_text("lr: 0.1\n")
    with pytest.raises(WeightsError, match=r"config.yaml: cannot read checkpoint \(not a PyTorch checkpoint file\)"):
        load_checkpoint(text)
    plain = tmp_path / "plain.pth"
    torch.save(TimeSeriesSwin(**TS).state_dict(), plain)
    with pytest.raises(WeightsError, match="not a DuST checkpoint"):
        load_checkpoint(plain)


def test_damaged_contents_are_refused_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "ts.pth", TimeSeriesSwin(**TS))
    payload = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in payload.items() if k != "kind"}, tmp_path / "no_kind.pth")
    with pytest.raises(WeightsError, match=r"no_kind.pth: a damaged DuST checkpoint \(no kind\)"):
        load_checkpoint(tmp_path / "no_kind.pth")
    torch.save({**payload, "config": {**payload["config"], "no_such_setting": 1}}, tmp_path / "odd.pth")
    with pytest.raises(WeightsError, match="odd.pth: its model config does not build"):
        load_checkpoint(tmp_path / "odd.pth").build()
