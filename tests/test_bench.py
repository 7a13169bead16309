"""The benchmark workloads at toy sizes: rows come out complete and the FLOPs credited match."""

from __future__ import annotations

import torch

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
