"""harness/hardware.py's utilities: the CPU's measured matmul peak that MFU is read against, and
the one-shot GPU check script (its plumbing, as far as a CPU can run it)."""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, load_harness


@pytest.fixture
def hardware(monkeypatch, tmp_path):
    return load_harness(monkeypatch, tmp_path, "hardware")


def test_cpu_peak_is_measured_once_per_machine_and_kept(hardware, monkeypatch):
    monkeypatch.setattr(hardware, "measure_undisturbed", lambda measure: (measure(), True))  # a quiet machine
    calls = []
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda dtype: calls.append(dtype) or 123e9)
    cpu = torch.device("cpu")
    assert hardware.peak_flops_of(cpu, bf16=True) == 123e9
    assert hardware.peak_flops_of(cpu, bf16=True) == 123e9
    assert calls == [torch.bfloat16]  # the second run read it from the cache
    assert os.path.exists(hardware.PEAK_FLOPS_FILE)
    hardware.peak_flops_of(cpu, bf16=False)  # another precision is another peak
    assert calls == [torch.bfloat16, torch.float32]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)  # so is another thread count
        hardware.peak_flops_of(cpu, bf16=True)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 3


def test_a_peak_a_neighbour_disturbed_is_measured_again_until_undisturbed(hardware, monkeypatch):
    rates, undisturbed = iter([50e9, 40e9, 200e9]), iter([False, False, True])
    monkeypatch.setattr(hardware, "measure_undisturbed", lambda measure: (measure(), next(undisturbed)))
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda dtype: next(rates))
    cpu = torch.device("cpu")
    assert hardware.peak_flops_of(cpu, bf16=True) == 50e9
    assert hardware.peak_flops_of(cpu, bf16=True) == 50e9  # disturbed again, and lower: the better one kept
    assert hardware.peak_flops_of(cpu, bf16=True) == 200e9  # undisturbed at last
    assert hardware.peak_flops_of(cpu, bf16=True) == 200e9  # and kept: no fourth probe


def test_a_measurement_is_disturbed_when_a_thread_waits_for_a_cpu(hardware, monkeypatch):
    """The night's case: on 2 cores one busy neighbour kept the load average at 1 (quiet, by the
    old test), halved the 2-thread peak, and MFU read over 100% for every run after."""
    waits = iter([{"1": 0.0, "2": 0.0}, {"1": 0.0, "2": 0.004}])  # 4 ms of 100: quiet
    assert hardware.measure_undisturbed(lambda: time.sleep(0.1) or 7, lambda: next(waits)) == (7, True)
    waits = iter([{"1": 0.0, "2": 0.0}, {"1": 0.01, "2": 0.0, "3": 0.06}])  # "3": a thread the measurement started
    assert hardware.measure_undisturbed(lambda: time.sleep(0.1) or 7, lambda: next(waits)) == (7, False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 0.0, 0.0))  # no schedstat (macOS): the load average
    assert hardware.measure_undisturbed(lambda: 7, lambda: None) == (7, False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert hardware.measure_undisturbed(lambda: 7, lambda: None) == (7, True)


@pytest.mark.parametrize("contents", ['{"%s": 99000000000.0}', '[1, 2]', '{"%s": {"flops": 1}}',
                                      '{"%s": {"flops": 1, "quiet": true}}'])  # "quiet": by the load average
def test_a_peak_file_of_another_format_is_measured_afresh(hardware, monkeypatch, contents):
    monkeypatch.setattr(hardware, "measure_undisturbed", lambda measure: (measure(), True))
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda dtype: 123e9)
    key = f"{hardware.cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {torch.bfloat16}"
    with open(hardware.PEAK_FLOPS_FILE, "w") as f:
        f.write(contents.replace("%s", key.replace('"', '\\"')) if "%s" in contents else contents)
    assert hardware.peak_flops_of(torch.device("cpu"), bf16=True) == 123e9


@pytest.mark.skipif(shutil.which("g++") is None or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="needs g++ and an x86 CPU with AVX2")
def test_a_vector_isa_check_passed_once_is_not_run_again(hardware, monkeypatch, tmp_path):
    from torch._inductor import cpu_vec_isa
    monkeypatch.setattr(cpu_vec_isa.VecISA, "check_build", cpu_vec_isa.VecISA.check_build)  # undone afterwards
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    loads = []  # inductor's check loads the library it built in a fresh Python process: the slow part
    check_call = subprocess.check_call
    monkeypatch.setattr(subprocess, "check_call", lambda *args, **kw: loads.append(args) or check_call(*args, **kw))
    hardware.remember_isa_checks("12")
    avx2 = cpu_vec_isa.VecAVX2()
    assert avx2.check_build(cpu_vec_isa.VecISA._avx_code)
    assert len(loads) == 1 and len(hardware.read_json(hardware.ISA_CHECKS_FILE)) == 1
    assert avx2.check_build(cpu_vec_isa.VecISA._avx_code)
    assert len(loads) == 1  # the kept answer: no build, no fresh process
    assert not avx2.check_build("this is not C++")
    assert len(hardware.read_json(hardware.ISA_CHECKS_FILE)) == 1  # a failure is not kept


def test_matmul_probe_measures_a_plausible_rate(hardware):
    flops = hardware.measure_matmul_flops(torch.float32, sizes=(128, 256), seconds=0.05)
    assert 1e8 < flops < 1e14  # 0.1 GFLOP/s .. 100 TFLOP/s: a CPU, fast or slow


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", os.path.join(ROOT, "tests", "gpu_check.sh")], check=True)


def test_gpu_check_dry_run(tmp_path):
    # The whole script, shrunk to the smoke setup and a tiny model: about a minute on a CPU
    env = dict(os.environ, GPU_CHECK_DRY="1", PYTHON=sys.executable, OUT=str(tmp_path))
    result = subprocess.run(["bash", os.path.join(ROOT, "tests", "gpu_check.sh")], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "tests:      rc 0" in summary and summary.count("full_steps: depth 2") == 4, summary
    assert re.search(r"first step: cold cache [\d.]+ s \| warm, train.py unchanged [\d.]+ s \| "
                     r"warm, after a one-line edit [\d.]+ s", summary), summary
    assert "whole run:  rc 0 | whole_run: val_bpb" in summary and "outside the budget = start-up" in summary, summary
