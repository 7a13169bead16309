"""Command-line basics: presets listing, flag spellings, usage errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dust.cli import main
from dust.models import list_presets


def test_presets_table_lists_every_preset_with_its_size(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "87,643,084" in out  # the paper video model for 4 classes
    for branch, entries in list_presets().items():
        for name in entries:
            assert any(line.split()[:2] == [branch, name] for line in out.splitlines()), (branch, name)


def test_presets_yaml_is_the_preset_table(capsys):
    assert main(["presets", "--format", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == list_presets()


def test_unknown_flag_is_a_usage_error(capsys):
    try:
        code = main(["train-ts", "--no_such_flag"])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert "unrecognized arguments: --no_such_flag" in capsys.readouterr().err


def test_missing_input_file_is_one_clear_line(tmp_path, capsys):
    code = main(["train-ts", "--path_kine_train", str(tmp_path / "nope.npy"), "--outpath", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.npy" in err
    assert not (tmp_path / "o").exists()


def test_unwritable_output_folder_is_one_clear_line(tmp_path, capsys):
    from dust.data.toy import generate_toy_data

    generate_toy_data(tmp_path / "data", n_train=2, n_val=2, num_frames=1, height=16, width=16, kine_len=9,
                      fmt="npy", progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    data = ["--path_kine_train", str(tmp_path / "data" / "kine_train.npy"), "--path_kine_val",
            str(tmp_path / "data" / "kine_val.npy"), "--path_label_train", str(tmp_path / "data" / "label_train.npy"),
            "--path_label_val", str(tmp_path / "data" / "label_val.npy"), "--num_frames", "9"]
    code = main(["train-ts", *data, "--model_preset", "nano", "--outpath", str(blocker / "models"), "--no_progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot write there" in err and str(blocker / "models") in err


def test_an_output_that_cannot_be_written_is_a_one_line_error_naming_it(tmp_path, capsys):
    from dust.atomic import write_text
    from dust.errors import InputError

    (tmp_path / "afile").write_text("")
    for target in (tmp_path, tmp_path / "afile" / "out.csv", Path("/proc/out.csv")):
        with pytest.raises(InputError, match=f"^{re.escape(str(target))}: cannot write there"):
            write_text(target, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no temporary file left behind


@pytest.mark.parametrize("setting, message", [
    ("batch_size: [1, 2]", "batch_size must be a single value"),
    ("batch_size: 2.5", "batch_size: expected int, got 2.5"),
    ("no_progress: 'no'", "no_progress is a switch: true or false"),
    ("lr: fast", "lr: expected float, got 'fast'"),
])
def test_config_values_are_checked_like_flags(tmp_path, capsys, setting, message):
    config = tmp_path / "bad.yaml"
    config.write_text(setting + "\n")
    assert main(["train-ts", "--config", str(config)]) == 2
    assert f"bad.yaml: {message}" in capsys.readouterr().err


def test_config_numbers_in_yaml_1_1_spellings_are_read(tmp_path):
    from dust.cli import PARSERS, apply_config, build_parser

    build_parser()
    config = tmp_path / "ok.yaml"
    config.write_text("lr: 1e-5\nbatch_size: 4\nno_progress: true\n")  # PyYAML reads 1e-5 as a string
    apply_config(PARSERS["train-ts"], str(config), "train-ts", strict_keys=True)
    args = PARSERS["train-ts"].parse_args([])
    assert (args.lr, args.batch_size, args.no_progress) == (1e-5, 4, True)
