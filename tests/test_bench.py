"""``paranorm bench``: the report is complete and self-consistent (no timing assertions)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from paranorm import ParanormError
from paranorm._bench import CASES, FULL, QUICK, markdown_table, run_suite, select_cases
from paranorm._bench.stats import paired_overheads
from paranorm._bench.timing import peak_bytes
from paranorm.cli import main


def check_consistent(result):
    times = {k: v["min"] for k, v in result["times_s"].items()}
    assert result["ratios"], result
    for key, ratio in result["ratios"].items():
        a, b = key.split("/")
        assert ratio == pytest.approx(times[a] / times[b], rel=1e-12)
    for key, share in result["overheads"].items():
        a = key.split("-overhead/")[0]
        expected = (times[a] - times["plain"]) / (times["torch"] - times["plain"])
        assert share == pytest.approx(expected, rel=1e-12)
    for stats in result["times_s"].values():
        assert 0 < stats["min"] <= stats["median"]
    samples = result["samples_s"]
    for impl, stats in result["times_s"].items():
        assert len(samples[impl]) == result["samples"] and min(samples[impl]) == stats["min"]
    for impl, paired in result["overheads_paired"].items():
        d = [t - p for t, p in zip(samples[impl], samples["plain"], strict=True)]
        d_torch = [t - p for t, p in zip(samples["torch"], samples["plain"], strict=True)]
        assert paired["share"] == pytest.approx(statistics.median(d) / statistics.median(d_torch), rel=1e-12)
    assert set(result["peak_bytes"]) == set(result["times_s"])


def test_quick_json_on_a_tiny_case(capsys):
    # One thread: on a loaded 2-core machine two threads wait on each other in every kernel.
    code = main(["bench", "--quick", "--json", "--cases", "linear-16-8-b2", "--repeats", "2",
                 "--threads", "1"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["meta"]["threads"] == 1 and report["meta"]["repeats"] == 2
    results = report["results"]
    assert [(r["norm"], r["mode"]) for r in results] == [
        ("weight_norm", "train"), ("weight_norm", "eval"), ("spectral_norm", "train"), ("spectral_norm", "eval")
    ]
    for r in results:
        check_consistent(r)
        expected = {"plain", "torch-legacy", "torch", "paranorm"}
        expected |= {"paranorm-fast"} if r["mode"] == "train" else {"paranorm-folded"}
        assert set(r["times_s"]) == expected
    # A training step of Linear(16, 8) allocates at least its gradients: (8*16 + 8) float32s.
    train = results[0]
    assert train["peak_bytes"]["plain"] >= (8 * 16 + 8) * 4  # measured, not None
    assert set(report["summary"]) >= {"weight_norm", "spectral_norm", "eval_folded_over_plain"}


def test_discriminator_called_twice_has_the_once_policy():
    report = run_suite(["tiny-d-b2"], repeats=2, warmup=0, target_s=1e-4, modes=("train",), threads=1)
    (result,) = report["results"]
    assert result["calls_per_step"] == 2
    assert "paranorm-once" in result["times_s"]
    check_consistent(result)
    assert "paranorm-once-overhead/torch-overhead" in result["overheads"] or result["overheads"] == {}
    table = markdown_table(report)
    assert table.count("\n") == 2 and "tiny-d-b2" in table and "train: once" in table


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    run_suite(["linear-16-8-b2"], repeats=1, warmup=0, target_s=1e-4, modes=("eval",), threads=1)
    assert torch.get_num_threads() == before


def test_peak_bytes_counts_a_known_allocation():
    def fn():
        a = torch.ones(25_000)  # 100 000 bytes, alive together with b
        b = torch.ones(5_000)
        del a, b

    assert peak_bytes(fn) >= 120_000


def test_unknown_case_is_an_error(capsys):
    with pytest.raises(ParanormError, match=r"unknown case.*nope"):
        select_cases(["nope"])
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--cases", "nope"])
    assert exc.value.code == 2
    assert "unknown case" in capsys.readouterr().err
    with pytest.raises(ParanormError, match="repeats >= 1"):
        run_suite(["linear-16-8-b2"], repeats=0)


def test_suites_name_known_cases_and_cover_the_issue():
    assert set(QUICK) <= set(CASES) and set(FULL) <= set(CASES)
    kinds = {CASES[c].id.split("-")[0] for c in FULL}
    assert {"linear", "conv1d", "conv2d", "convtr1d", "hifigan", "sngan"} <= kinds
    assert CASES["sngan-d-b16"].calls == 2


def test_device_is_checked_before_anything_runs(capsys):
    with pytest.raises(ParanormError, match=r"not supported.*'cpu' or 'cuda"):
        run_suite(["linear-16-8-b2"], repeats=1, device="meta")
    with pytest.raises(ParanormError, match="cannot parse device 'gpu0'"):
        run_suite(["linear-16-8-b2"], repeats=1, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ParanormError, match=r"is_available\(\) is False"):
            run_suite(["linear-16-8-b2"], repeats=1, device="cuda")
        assert main(["bench", "--cases", "linear-16-8-b2", "--device", "cuda"]) != 0
        assert "is_available() is False" in capsys.readouterr().err


def test_report_names_its_device_and_best_share():
    report = run_suite(["tiny-d-b2"], repeats=2, warmup=0, target_s=1e-4, modes=("train",), threads=1)
    assert report["meta"]["device"] == "cpu"
    summary = report["summary"]["spectral_norm"]
    (result,) = report["results"]
    expected = result["overheads"].get("paranorm-once-overhead/torch-overhead")
    assert summary["median_overhead_share_best"] == expected  # one case: its own share (or None)
    assert summary["default_path_interval_misses_1"] in ("0/1", "1/1")
    assert summary["paired_share_undecided"].endswith("/1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_times_and_measures_on_the_gpu():
    report = run_suite(["linear-16-8-b2"], repeats=2, warmup=0, target_s=1e-4, threads=1, device="cuda")
    assert report["meta"]["device"].startswith("cuda:")
    train = report["results"][0]
    check_consistent(train)
    # The gradients alone are (8*16 + 8) float32s, allocated on the GPU during the step.
    assert train["peak_bytes"]["plain"] >= (8 * 16 + 8) * 4


def test_paired_share_cancels_a_load_change_that_hits_whole_rounds():
    # Overheads of 1.0 (torch) and 0.3 (fast) on top of a plain step whose time swings 10x
    # between rounds: minima mix rounds, pairs do not.
    load = [1.0, 10.0, 3.0, 7.0, 2.0, 5.0, 9.0, 4.0, 6.0, 8.0] * 3
    samples = {"plain": load, "torch": [t + 1.0 for t in load], "paranorm-fast": [t + 0.3 for t in load]}
    paired = paired_overheads(samples)["paranorm-fast"]
    assert paired["share"] == pytest.approx(0.3)
    assert paired["p10"] == pytest.approx(0.3) and paired["p90"] == pytest.approx(0.3)


def test_paired_share_is_undefined_where_torch_has_no_overhead():
    plain = [1.0] * 30
    # torch's overhead: +1 in 16 rounds, -1 in 14: the median is +1, but about 4 resamplings
    # in 10 put it at -1 or 0, so the share has a value and no interval.
    torch_times = [1.0 + d for d in [-1.0, 1.0] * 14 + [1.0, 1.0]]
    samples = {"plain": plain, "torch": torch_times, "paranorm-fast": [1.5] * 30}
    paired = paired_overheads(samples)["paranorm-fast"]
    assert paired == {"share": 0.5, "p10": None, "p90": None}
    samples["torch"] = [0.9] * 30  # torch faster than plain: no share at all
    assert paired_overheads(samples) == {}


def test_terminal_report_fits_80_columns_and_reads_as_sentences(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code = main(["bench", "--cases", "linear-16-8-b2", "--repeats", "2", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "linear-16-8-b2" in out  # the case name is never broken across lines
    assert not any(line.lstrip().startswith("{") for line in lines)  # no raw JSON dumps
    report_lines = [line for line in lines if line.startswith(("weight norm:", "spectral norm:"))]
    assert len(report_lines) == 2, out
