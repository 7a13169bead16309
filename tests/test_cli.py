"""Command-line basics: presets listing, flag spellings, usage errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dust.cli import main
from dust.errors import InputError
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


def test_usage_errors_are_one_line_naming_the_help_to_read(capsys):
    for argv, message in [(["train-ts", "--no_such_flag"], "unrecognized arguments: --no_such_flag"),
                          (["gen-data", "--n_train", "x"], "argument --n_train/--n-train: invalid int value: 'x'"),
                          (["run", "--stages", "gen-data", "--n_train", "x"], "invalid int value: 'x'")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("dust: error: ") and message in err and err.count("\n") == 0, err
        assert err.endswith(f"(see `dust {argv[0] if argv[0] != 'run' else 'gen-data'} --help`)")


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


def _tiny_series(tmp_path: Path) -> list[str]:
    from dust.data.toy import generate_toy_data

    generate_toy_data(tmp_path / "data", n_train=4, n_val=2, num_frames=1, height=16, width=16, kine_len=9,
                      fmt="npy", progress=False)
    return [
        "--path_kine_train", str(tmp_path / "data" / "kine_train.npy"),
        "--path_kine_val", str(tmp_path / "data" / "kine_val.npy"),
        "--path_label_train", str(tmp_path / "data" / "label_train.npy"),
        "--path_label_val", str(tmp_path / "data" / "label_val.npy"),
        "--model_preset", "nano", "--num_frames", "9", "--no_progress", "--overwrite",
        "--outpath", str(tmp_path / "models"), "--logpath", str(tmp_path / "logs")]


@pytest.mark.parametrize("flags, message", [
    (["--precision", "foo"], "--precision foo: Precision 'foo' is invalid"),
    (["--devices", "0"], "--devices 0 "),
    (["--strategy", "nope"], "--strategy nope "),
    (["--accelerator", "gpu"], "--accelerator gpu "),
    (["--accumulate_grad_batches", "0"], "--accumulate_grad_batches must be at least 1, got 0"),
    (["--num_nodes", "0"], "--num_nodes must be at least 1, got 0"),
    (["--label_smoothing", "2"], "--label_smoothing must be between 0 and 1, got 2.0"),
    (["--num_workers", "-1"], "--num_workers must be a finite non-negative number, got -1"),
    (["--weight_decay", "-0.1"], "--weight_decay must be a finite non-negative number, got -0.1"),
    (["--weight_decay", "nan"], "--weight_decay must be a finite non-negative number, got nan"),
    (["--warmup_epochs", "inf", "--schedule", "cosine"], "--warmup_epochs must be a finite non-negative number"),
    (["--resume_interval", "nan"], "--resume_interval must be a non-negative number, got nan"),
    (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
    (["--class_weights", "nan,1,1,1"], "--class_weights needs 4 finite non-negative numbers, not all 0"),
    (["--class_weights", "0,0,0,0"], "--class_weights needs 4 finite non-negative numbers, not all 0"),
    (["--class_weights", "1,2"], "--class_weights needs 4 finite non-negative numbers"),
    (["--devices", "1,x"], "--devices must be a count, 'auto' or a list like 0,1; got '1,x'"),
    (["--window_size", "0"], "--window_size must be at least 1, got 0"),
    (["--num_frames", "0"], "--num_frames must be at least 1, got 0"),
    (["--seed", "-1"], "--seed must be between 0 and 4294967295, got -1"),
    (["--augment", "--crop", "-0.5"], "--crop is a fraction of the length, in [0, 1]; got -0.5"),
    (["--augment", "--scale", "nan"], "--scale must be a finite non-negative number, got nan"),
])
def test_training_flags_lightning_or_torch_would_refuse_are_one_line_errors(tmp_path, capsys, flags, message):
    assert main(["train-ts", *_tiny_series(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dust: error: ") and err.count("\n") == 0 and message in err
    assert not (tmp_path / "models").exists() and not (tmp_path / "logs").exists()  # no empty folders either


def test_fewer_epochs_than_print_every_still_validate_the_last(tmp_path, capsys):
    assert main(["train-ts", *_tiny_series(tmp_path), "--num_epochs", "2", "--print_every", "3"]) == 0
    history = (tmp_path / "logs" / "step_1d_history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["2"]
    assert "lowest validation loss nan" not in capsys.readouterr().out


@pytest.mark.parametrize("what, flag, value, message", [
    ("kine", "--path_kine_train", float("inf"), "kinematics row 1 holds infinite values"),
    ("video", "--path_video_val", float("nan"), "video row 1 holds NaN values"),
])
def test_non_finite_inputs_are_refused_naming_file_and_row(tmp_path, capsys, what, flag, value, message):
    import numpy as np

    from dust.data.toy import generate_toy_data

    data = tmp_path / "data"
    generate_toy_data(data, n_train=3, n_val=2, num_frames=2, height=16, width=16, kine_len=9, fmt="npy",
                      progress=False)
    split = "train" if flag.endswith("train") else "val"
    array = np.load(data / f"{what}_{split}.npy").astype(np.float32)
    array[1].flat[5] = value
    bad = tmp_path / "bad.npy"
    np.save(bad, array)
    args = {"kine": ["train-ts", "--path_kine_val", str(data / "kine_val.npy"), "--num_frames", "9"],
            "video": ["train-video", "--path_video_train", str(data / "video_train.npy")]}[what]
    code = main([*args, flag, str(bad), "--path_label_train", str(data / "label_train.npy"),
                 "--path_label_val", str(data / "label_val.npy"), "--model_preset", "nano", "--no_progress",
                 "--outpath", str(tmp_path / "models"), "--logpath", str(tmp_path / "logs")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"dust: error: {bad}: {message}"


def test_resume_from_a_file_that_cannot_resume_this_stage_is_a_one_line_error(tmp_path, capsys):
    args = _tiny_series(tmp_path)
    assert main(["train-ts", *args, "--num_epochs", "1"]) == 0
    other = tmp_path / "other"  # the same stage with another preset: shapes differ
    assert main(["train-ts", *args[:-4], "--outpath", str(other), "--logpath", str(tmp_path / "logs2"),
                 "--model_preset", "small", "--num_epochs", "1"]) == 0
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    capsys.readouterr()
    for given, message in [(tmp_path / "models" / "final_1d.pth", "not a checkpoint to resume from (resume needs"),
                           (tmp_path / "text.ckpt", "not a checkpoint to resume from (UnpicklingError)"),
                           (other / "resume.ckpt", "a checkpoint of another model")]:
        assert main(["train-ts", *args, "--resume_from", str(given)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"dust: error: {given}: {message}") and err.count("\n") == 0, err


@pytest.mark.parametrize("command", [["gen-data", "--outdir"], ["prepare", "manifest.csv", "--out"]])
def test_an_output_folder_under_a_file_is_refused_before_any_work(tmp_path, capsys, command):
    (tmp_path / "afile").write_text("")
    (tmp_path / "manifest.csv").write_text("video,kinematics,label\n")
    target = tmp_path / "afile" / "out"
    argv = [part if part != "manifest.csv" else str(tmp_path / part) for part in command]
    assert main([*argv, str(target), "--no_progress"]) == 2
    assert capsys.readouterr().err.strip() == (f"dust: error: {target}: cannot write there "
                                               f"({tmp_path / 'afile'} is a file, not a folder)")


def test_config_numbers_for_text_flags_are_read_as_text(tmp_path):
    from dust.cli import PARSERS, apply_config, build_parser

    build_parser()
    config = tmp_path / "text.yaml"
    config.write_text("devices: 1\nprecision: 32\noutpath: 5\n")  # YAML reads these as numbers
    apply_config(PARSERS["train-ts"], str(config), "train-ts", strict_keys=True)
    args = PARSERS["train-ts"].parse_args([])
    assert (args.devices, args.precision, args.outpath) == ("1", "32", "5")
    config.write_text("outpath: true\n")
    with pytest.raises(InputError, match="text.yaml: outpath: expected text, got True"):
        apply_config(PARSERS["train-ts"], str(config), "train-ts", strict_keys=True)


def test_run_refuses_an_empty_stage_list_and_a_workdir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["run", "--stages", " , "]) == 2
    assert "--stages: no stage given" in capsys.readouterr().err
    assert main(["run", "--workdir", str(tmp_path / "afile"), "--stages", "gen-data"]) == 2
    assert "afile is a file, not a folder" in capsys.readouterr().err


def test_a_run_failing_before_it_writes_leaves_no_workdir(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["run", "--workdir", str(workdir), "--stages", "train-video", "--num_epochs", "1"]) == 2
    assert "video_train.pkl: no such file" in capsys.readouterr().err
    assert not workdir.exists()


def test_a_run_going_on_from_a_corrupt_record_is_refused(tmp_path, capsys):
    (tmp_path / "run.json").write_text("{not json")
    assert main(["run", "--workdir", str(tmp_path), "--stages", "train-fusion", "--num_epochs", "1"]) == 2
    assert "run.json: not a JSON file" in capsys.readouterr().err
    (tmp_path / "run.json").write_text('{"stages": []}')
    assert main(["run", "--workdir", str(tmp_path), "--stages", "train-fusion", "--num_epochs", "1"]) == 2
    assert "run.json: not what `dust run` writes" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 2, 10**12], "label 1000000000000 would make 1000000000001 classes; give --num_classes"),
    ([0j, 1j, 0j, 1j], "labels must be class indices (numbers), got complex128 values"),
])
def test_labels_that_would_exhaust_memory_or_crash_are_refused(tmp_path, capsys, labels, message):
    import numpy as np

    flags = _tiny_series(tmp_path)
    np.save(tmp_path / "bad.npy", np.array(labels))
    flags[flags.index("--path_label_train") + 1] = str(tmp_path / "bad.npy")
    assert main(["train-ts", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dust: error: {tmp_path / 'bad.npy'}: ") and message in err and err.count("\n") == 0


def test_a_config_that_is_not_text_is_refused(tmp_path, capsys):
    config = tmp_path / "binary.yaml"
    config.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["train-ts", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"dust: error: {config}: not a text file (a config is UTF-8 YAML)"


def test_convert_reference_refuses_to_overwrite_its_input(tmp_path, capsys):
    weights = tmp_path / "ts.pth"
    weights.write_bytes(b"reference weights")
    assert main(["convert-reference", "ts", str(tmp_path / "ts.json"), str(weights), str(weights)]) == 2
    assert "ts.pth: is the input file" in capsys.readouterr().err
    assert weights.read_bytes() == b"reference weights"


def test_sigterm_leaves_no_temporary_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "toy"
    child = subprocess.Popen([sys.executable, "-m", "dust", "gen-data", "--outdir", str(out), "--n_train", "400",
                              "--no_progress"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(out.glob(".*.tmp")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until the first temporary file is being written
    assert child.poll() is None, "gen-data ended before it could be stopped"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM and err.strip().endswith("dust: terminated")
    assert not [p.name for p in out.glob(".*")]  # no hidden temporary file left behind
