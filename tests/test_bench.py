"""The benchmark workloads at toy sizes: rows come out complete and the FLOPs credited match."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable

import pytest
import torch

from dust.benchmarking.ceiling import product_ceiling, record_counted_ops
from dust.benchmarking.measure import count_flops
from dust.benchmarking.workloads import Env, bench_ts, bench_video

ENV = Env(torch.device("cpu"), repeats=1, warmup=1)


def test_time_series_rows_credit_the_same_work_to_both_attentions():
    fused = bench_ts(ENV, peak=100.0, preset="nano", batch=4, length=13)
    plain = bench_ts(ENV, peak=100.0, preset="nano", batch=4, length=13, attention="reference")
    assert [r.workload for r in fused] == ["ts train", "ts infer"]
    assert plain[0].note.startswith("plain attention (SDPA)") and not fused[0].note.startswith("plain")
    for ours, theirs in zip(fused, plain):
        assert ours.gflop_per_sample == theirs.gflop_per_sample > 0  # counted on the plain formulation
        assert ours.samples_per_s > 0 and ours.peak_fraction == ours.gflops / 100.0
    assert fused[0].gflop_per_sample > 2 * fused[1].gflop_per_sample  # training counts the backward too


def test_video_rows_credit_the_same_work_to_both_attentions():
    fused = bench_video(ENV, peak=100.0, preset="nano", clip=(4, 32, 32), batch=1)
    plain = bench_video(ENV, peak=100.0, preset="nano", clip=(4, 32, 32), batch=1, attention="reference")
    assert [r.workload for r in fused] == ["video train", "video infer"]
    assert plain[0].note.startswith("torchvision attention")
    assert [r.gflop_per_sample for r in fused] == [r.gflop_per_sample for r in plain]


def _linear_step(batch: int = 6):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 24), torch.nn.GELU(), torch.nn.Linear(24, 3))
    x, y = torch.randn(batch, 10), torch.randint(0, 3, (batch,))

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()

    return step


def test_recorded_ops_are_the_steps_matrix_products_by_layout():
    calls = record_counted_ops(_linear_step())
    by_op = {}
    for (op, args, _), count in calls.items():
        shapes = tuple(a.shape for a in args if hasattr(a, "shape"))
        by_op.setdefault(op.overloadpacket.__name__, set()).add((shapes, count))
    # forward: two addmm; backward: the input gradient of the second layer, both weight gradients
    assert by_op["addmm"] == {(((24,), (6, 10), (10, 24)), 1), (((3,), (6, 24), (24, 3)), 1)}
    assert {shapes for shapes, _ in by_op["mm"]} == {((6, 3), (3, 24)), ((3, 6), (6, 24)), ((24, 6), (6, 10))}
    assert set(by_op) == {"addmm", "mm"}  # GELU, loss, sums: not counted, not recorded


def test_ceiling_replays_exactly_the_work_the_step_did():
    step = _linear_step()
    ceiling = product_ceiling(step, torch.device("cpu"), repeats=1)
    assert ceiling.flops == count_flops(step)  # same ops, same shapes: the same FLOPs
    assert ceiling.calls == 5 and ceiling.distinct == 5 and ceiling.seconds > 0


def test_ceiling_replays_strided_and_broadcast_operands():
    a = torch.randn(4, 8, 6).transpose(1, 2)  # (4, 6, 8), not contiguous
    b = torch.randn(8, 5).expand(4, 8, 5)  # stride 0 in the batch dimension
    calls = record_counted_ops(lambda: torch.bmm(a, b))
    ((_, args, _), count), = calls.items()
    assert count == 1 and [arg.stride for arg in args] == [a.stride(), b.stride()]
    ceiling = product_ceiling(lambda: torch.bmm(a, b), torch.device("cpu"), repeats=1)
    assert ceiling.flops == 2 * 4 * 6 * 8 * 5


def test_suite_rows_carry_the_training_steps_ceiling():
    rows = bench_ts(ENV, peak=100.0, preset="nano", batch=4, length=13, ceiling=True)
    assert [r.workload for r in rows] == ["ts train", "ts train ceiling", "ts infer"]
    train, ceiling = rows[0], rows[1]
    assert ceiling.gflop_per_sample == train.gflop_per_sample  # judged on the same counted work
    assert ceiling.mode == "ops alone" and ceiling.extra["calls"] > 0 and ceiling.extra["ops_gflop"] > 0
    assert ceiling.peak_fraction == ceiling.gflops / 100.0
    video = bench_video(ENV, peak=100.0, preset="nano", clip=(4, 32, 32), batch=1, infer=False, ceiling=True)
    assert [r.workload for r in video] == ["video train", "video train ceiling"]


def test_a_ceiling_that_cannot_be_replayed_is_reported_not_raised(monkeypatch):
    from dust.benchmarking import workloads

    def unreplayable(*args, **kwargs):
        raise RuntimeError("aten::some_kernel cannot run alone")

    monkeypatch.setattr(workloads, "product_ceiling", unreplayable)
    rows = bench_ts(ENV, peak=100.0, preset="nano", batch=2, length=13, ceiling=True)
    ceiling = rows[1]
    assert ceiling.workload == "ts train ceiling" and ceiling.gflops is None
    assert ceiling.note == "not measured: RuntimeError: aten::some_kernel cannot run alone"


def test_full_suite_compares_the_video_model_at_train_videos_default_batch():
    from dust.benchmarking.suite import SuiteConfig
    from dust.cli import PARSERS, build_parser

    build_parser()
    default_batch = PARSERS["train-video"].parse_args([]).batch_size
    for config in (SuiteConfig.quick_config(), SuiteConfig.full_config()):
        assert all(0 <= i < len(config.video) for i in config.compared)
    compared = [SuiteConfig.full_config().video[i] for i in SuiteConfig.full_config().compared]
    assert ("paper", (16, 64, 64), default_batch) in compared


def test_bench_checks_its_output_paths_before_measuring(tmp_path, capsys):
    from dust.cli import main

    (tmp_path / "afile").write_text("")
    cases = [(["--workdir", str(tmp_path / "missing")], "--workdir is not an existing folder"),
             (["--json", str(tmp_path)], "--json is a folder"),
             (["--json", str(tmp_path / "afile" / "b.json")], "afile is a file, not a folder")]
    for flags, message in cases:
        assert main(["bench", "--quick", *flags]) == 2  # at once: a run would take minutes
        err = capsys.readouterr()
        assert message in err.err and "..." not in err.err  # no benchmark started


def _bf16_suite(monkeypatch, bf16_peak: float):
    """`_cpu_bf16_rows` at toy sizes, with a yardstick of our choosing; returns (rows, the float32 rows)."""
    from dust.benchmarking import suite

    def toy_ts(env, peak, **kwargs):
        assert env.autocast == torch.bfloat16
        return bench_ts(env, peak, preset="nano", batch=4, length=13)

    def toy_video(env, peak, **kwargs):
        return bench_video(env, peak, preset="nano", clip=(4, 32, 32), batch=1)

    monkeypatch.setattr(suite, "matmul_peak", lambda device, dtype: bf16_peak)
    monkeypatch.setattr(suite, "bench_ts", toy_ts)
    monkeypatch.setattr(suite, "bench_video", toy_video)
    fp32 = bench_ts(ENV, peak=100.0, preset="nano", batch=4, length=13)
    fp32[0].extra["eager_s"] = 2 * fp32[0].seconds_per_step  # as if a compiled step had been twice as fast
    config = suite.SuiteConfig(quick=True, video=(("nano", (4, 32, 32), 1),))
    rows, peaks = suite._cpu_bf16_rows(config, ENV, 100.0, fp32, lambda message: None)
    return rows, fp32, peaks


def test_bf16_rows_are_judged_by_the_bf16_yardstick(monkeypatch):
    rows, fp32, peaks = _bf16_suite(monkeypatch, bf16_peak=600.0)
    assert [r.workload for r in rows] == ["matmul peak", "ts train", "ts infer", "video train", "video infer"]
    assert rows[0].mode == "bfloat16" and rows[0].note == "6.0x the float32 yardstick" and peaks == [600.0, 600.0]
    for row in rows[1:]:
        assert row.mode.endswith(", bf16") and row.peak_fraction == row.gflops / 600.0
    speedup = fp32[0].extra["eager_s"] / rows[1].seconds_per_step  # bf16 runs eager: against the eager step
    assert rows[1].note.startswith(f"{speedup:.1f}x the float32 eager row")
    assert all(r.extra["peak_dtype"] == "bfloat16" for r in rows)


def test_bf16_rows_are_skipped_without_native_bf16_products(monkeypatch):
    rows, _, _ = _bf16_suite(monkeypatch, bf16_peak=120.0)
    assert len(rows) == 1 and "no native bfloat16 products, bf16 rows skipped" in rows[0].note


def _stand_in_suite(monkeypatch, samples: Iterable[float]):
    """The suite module with stand-in workloads taking the given matmul samples in order; returns it and
    what the stand-ins were asked for (the time-series attentions, the memory runs)."""
    from dust.benchmarking import suite
    from dust.benchmarking.workloads import Row

    taken = iter(samples)
    calls: dict[str, list] = {"ts": [], "epochs": []}

    def ts(env, peak, **kw):
        calls["ts"].append(kw.get("attention", "fused"))
        return [Row("ts train", seconds_per_step=1.0, gflops=9.0)]

    monkeypatch.setattr(suite, "matmul_peak", lambda device, dtype: next(taken))
    monkeypatch.setattr(suite, "bench_ts", ts)
    monkeypatch.setattr(suite, "bench_video", lambda env, peak, **kw: [Row("video train", samples_per_s=1.0)])
    monkeypatch.setattr(suite, "bench_loader", lambda env, **kw: Row("loader", samples_per_s=1.0))
    monkeypatch.setattr(suite, "bench_features", lambda env, **kw: Row("features"))
    monkeypatch.setattr(suite, "stage1_epoch_memory", lambda runs, **kw: calls["epochs"].append(runs) or iter([]))
    return suite, calls


def _suite_with_yardsticks(monkeypatch, samples: list[float]):
    """`run_suite` with stand-in workloads and the given matmul samples, in the order the suite takes them."""
    suite, calls = _stand_in_suite(monkeypatch, samples)
    runs = (suite.MemoryRun(), suite.MemoryRun(precision="bf16-mixed"))
    config = suite.SuiteConfig(quick=True, memory_runs=runs)
    result = suite.run_suite(config)
    return result["rows"], [run.label() for run in calls["epochs"][0]]


def test_suite_judges_bf16_rows_by_the_best_bf16_sample_against_the_best_fp32_one(monkeypatch):
    # samples: fp32 first, bf16 (one: no video rows), fp32 before the seed rows, fp32 last
    rows, epochs = _suite_with_yardsticks(monkeypatch, [400.0, 2000.0, 420.0, 450.0])
    yardsticks = [r for r in rows if r["workload"] == "matmul peak"]
    assert [(r["mode"], r["gflops"]) for r in yardsticks] == [("float32", 450.0), ("bfloat16", 2000.0)]
    assert yardsticks[1]["note"] == "4.4x the float32 yardstick"  # best against best, after the last fp32 sample
    ts = [r for r in rows if r["workload"] == "ts train"]
    assert ts[0]["peak_fraction"] == 9.0 / 450.0 and ts[-1]["peak_fraction"] == 9.0 / 2000.0
    assert epochs == ["fast malloc", "fast malloc, bf16-mixed"]


def test_suite_without_native_bf16_skips_the_bf16_rows_and_epoch(monkeypatch):
    rows, epochs = _suite_with_yardsticks(monkeypatch, [400.0, 500.0, 420.0, 450.0])
    assert [r["mode"] for r in rows if r["workload"] == "matmul peak"] == ["float32", "bfloat16"]
    assert not any(r["mode"].endswith(", bf16") for r in rows)
    assert epochs == ["fast malloc"]


@pytest.mark.parametrize("recipe", ["quick_config", "full_config"])
def test_only_the_full_suite_times_the_time_series_before_figure(monkeypatch, recipe):
    suite, calls = _stand_in_suite(monkeypatch, itertools.repeat(100.0))
    config = getattr(suite.SuiteConfig, recipe)()
    suite.run_suite(dataclasses.replace(config, cpu_bf16=False))
    assert calls["ts"] == (["fused"] if recipe == "quick_config" else ["fused", "reference"])


_SMAPS = """\
7f0000000000-7f0000100000 r-xp 00000000 08:01 11 /venv/lib/python3.11/site-packages/torch/lib/libtorch_cpu.so
Size:               1024 kB
Rss:                 512 kB
7f0000100000-7f0000200000 r-xp 00000000 08:01 12 /venv/lib/python3.11/site-packages/torch/lib/libtorch_cuda.so
Size:               1024 kB
Rss:                 300 kB
Pss:                 300 kB
7f0000200000-7f0000300000 r--p 00000000 08:01 13 /venv/lib/python3.11/site-packages/nvidia/cu13/lib/libcublasLt.so.13
Rss:                  40 kB
7f0000300000-7f0000400000 rw-p 00000000 00:00 0
Rss:                4096 kB
7f0000400000-7f0000500000 r-xp 00000000 08:01 14 /opt/my cuda builds/venv/lib/libcurl.so.4
Rss:                   8 kB
7f0000500000-7f0000600000 r-xp 00000000 08:01 15 /venv/lib/python3.11/site-packages/triton/_C/libtriton.so
Rss:                   2 kB
"""


def test_gpu_library_rss_counts_only_the_gpu_runtimes_mappings():
    from dust.benchmarking.measure import _is_gpu_library, _mapped_rss

    assert _mapped_rss(_SMAPS.splitlines(True), _is_gpu_library) == (300 + 40 + 2) * 1024
    assert _mapped_rss(_SMAPS.splitlines(True), lambda path: True) == (512 + 300 + 40 + 8 + 2) * 1024


def test_memory_benchmark_runs_an_epoch_in_a_child_and_reports_its_memory(tmp_path):
    from dust.benchmarking.memory import MemoryRun, stage1_epoch_memory

    (result,) = stage1_epoch_memory((MemoryRun("lean"),), n_train=2, n_val=1, clip=(8, 32, 32), limit_batches=1,
                                    workdir=tmp_path)
    assert result["malloc"] == "lean" and result["batches"] == 1
    assert 0 < result["rss_after_imports"] < result["peak_rss"]
    assert 0 < result["peak_anon"] <= result["peak_rss"]
    assert 0 <= result["gpu_library_rss"] < result["rss_after_imports"]
    assert list(tmp_path.iterdir()) == []  # the toy data and the child's outputs are gone
