"""The hardware: the device, the process settings that suit it, and the peaks that MFU and peak
memory are read against. Infrastructure, not research: train.py calls these once each. Tables here
grow with new hardware; none of it is the judge's (the judge takes only the device's name and its
memory peak from here, as labels for the run record)."""

import ctypes
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import torch

from harness.cache import (ISA_CHECKS_FILE, PEAK_FLOPS_FILE, read_json, write_json_atomically)
from harness.clock import run_queue_delays


def default_device():
    """CUDA, else Apple's MPS, else the CPU (a CUDA build of torch on a machine without a GPU: CPU)."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    # the hardware, not how train.py uses it: results are compared by device, and a run that sets
    # its own thread count is still on the same machine
    if device.type == "mps":
        return f"Apple GPU (MPS, {cpu_model()})"
    return f"CPU {cpu_model()} ({os.cpu_count()} cores)"


def bf16_is_native(device):
    """Whether bf16 math is native: NVIDIA GPUs from Ampere on, CPUs with AVX512-BF16 or AMX (there
    a bf16 matmul runs several times an fp32 one). Elsewhere bf16 is emulated, slower than fp32.
    MPS counts as not: bf16 there needs macOS 14 and recent chips to pay off."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability() >= (8, 0)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def tune_process(device, compiling):
    """Process settings for training on `device` that change no result, only speed."""
    if device.type != "cpu":
        return
    if compiling and shutil.which("g++"):
        remember_isa_checks(subprocess.run(["g++", "-dumpversion"], capture_output=True, text=True).stdout.strip())
    if platform.libc_ver()[0] == "glibc":
        # A CPU training step frees and re-allocates gigabytes of activations and logits. By default
        # glibc hands big blocks back to the kernel, and every step pays to fault them in again,
        # zeroed. Keep freed memory in the process instead (torch puts big CPU tensors on 2 MB pages
        # when THP_MEM_ALLOC_ENABLE is set before it starts, as train.py does).
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_MAX, 0)  # big blocks come from the heap, not from fresh mappings...
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # ...and the heap is never trimmed


def remember_isa_checks(gxx_version):
    """inductor proves each vector ISA it may use (AVX2, AVX512, AVX512-BF16, AMX) by building a test
    and loading it in a fresh Python process, which imports torch: ~2 s apiece in every compiling
    run. Keep each success in the cache, keyed by all it depends on, so a machine proves it once.
    A failure is not kept: it is checked again next run."""
    from torch._inductor import cpu_vec_isa
    check_build = cpu_vec_isa.VecISA.check_build

    def remembered_check_build(isa, code):
        key = (f"{cpu_model()} | torch {torch.__version__} | g++ {gxx_version} | {isa._arch_flags} | "
               f"{hashlib.sha256(code.encode()).hexdigest()[:16]}")
        proven = read_json(ISA_CHECKS_FILE)
        if proven.get(key) is True:
            return True
        if not check_build(isa, code):
            return False
        try:
            write_json_atomically(ISA_CHECKS_FILE, {**read_json(ISA_CHECKS_FILE), key: True})
        except OSError:  # no cache folder: check again next time
            pass
        return True

    cpu_vec_isa.VecISA.check_build = remembered_check_build


def synchronize(device):
    """Wait for queued device work, so that wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


# Dense bf16 tensor-core peaks (vendor datasheets, without sparsity); the first name contained in
# the device's name wins. Pre-Ampere GPUs train in fp32, so theirs are fp32 peaks.
GPU_PEAK_FLOPS = [
    ("GB200", 2.5e15), ("B200", 2.25e15), ("H200 NVL", 835e12), ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12), ("H100", 989.5e12), ("H200", 989.5e12), ("H800", 989.5e12),
    ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A10", 125e12), ("RTX 6000 Ada", 364e12), ("A6000", 155e12), ("RTX 4090", 165e12),
    ("RTX 3090", 71e12), ("T4", 8.1e12), ("V100", 15.7e12),
]
# Apple GPUs in fp32 (MPS trains in fp32): GPU cores x 128 ALUs x 2 FLOPs x clock, for each chip's
# largest GPU variant, so MFU errs low rather than high; unknown chips get the largest figure.
MPS_PEAK_FLOPS = [
    ("M1 Ultra", 20.8e12), ("M1 Max", 10.4e12), ("M1 Pro", 5.2e12), ("M1", 2.6e12),
    ("M2 Ultra", 27.2e12), ("M2 Max", 13.6e12), ("M2 Pro", 6.8e12), ("M2", 3.6e12),
    ("M3 Ultra", 32.8e12), ("M3 Max", 16.4e12), ("M3 Pro", 7.4e12), ("M3", 4.1e12),
    ("M4 Max", 18.4e12), ("M4 Pro", 9.2e12), ("M4", 4.6e12),
]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux
        return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True).stdout.strip()


def measure_matmul_flops(dtype, sizes=(512, 1024, 2048), seconds=0.3):
    """The best rate of square matmuls in `dtype` on the CPU, over a few sizes (which one is best
    depends on the CPU's caches): the peak a CPU's MFU is read against. CPUs have no datasheet
    figure that holds across models, vector units, clocks and thread counts, so we measure. Each
    size is timed by its median product: the fastest single one is as often a timing outlier as
    the machine's speed, and MFU read against an outlier would stay low for the cache's life."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # the first call picks and prepares the kernel
        times = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * n**3 / statistics.median(times))
    return best


def cpu_peak_flops(dtype):
    """This machine's matmul peak in `dtype`, measured on first use (about a second) and kept in the
    cache, keyed by everything it depends on, so later runs pay nothing. A figure a neighbour
    disturbed reads low (and MFU high, past 100%): it is kept until a start measures undisturbed."""
    key = f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {dtype}"
    peaks = read_json(PEAK_FLOPS_FILE)
    kept = peaks.get(key)
    if not (isinstance(kept, dict) and {"flops", "undisturbed"} <= kept.keys()):
        kept = None  # includes figures from before "undisturbed", judged by the load average alone
    if kept and kept["undisturbed"]:
        return kept["flops"]
    flops, undisturbed = measure_undisturbed(lambda: measure_matmul_flops(dtype))
    flops = max(flops, kept["flops"] if kept else 0)
    peaks[key] = dict(flops=flops, undisturbed=undisturbed)
    print(f"Measured this CPU's matmul peak for MFU: {flops / 1e9:,.0f} GFLOP/s ({key})"
          + ("" if undisturbed else "; the machine is busy, so MFU may read high: measured again next start"))
    try:
        write_json_atomically(PEAK_FLOPS_FILE, peaks)
    except OSError:  # no cache folder: measure again next time
        pass
    return flops


def measure_undisturbed(measure, read_delays=run_queue_delays):
    """measure()'s result, and whether no neighbour disturbed it: none of this process's threads
    waited for a CPU for more than 5% of the time it took (the scheduler's own accounting). The
    load average cannot say so: on 2 cores, one busy neighbour leaves it at 1, "room to spare",
    while it halves a 2-thread matmul. Without run-queue accounting (macOS) the load average must
    leave a core for each of our threads (within half a core)."""
    before, started = read_delays(), time.time()
    if before is None:
        quiet = os.getloadavg()[0] < (os.cpu_count() or 1) - torch.get_num_threads() + 0.5
        return measure(), quiet
    result = measure()
    took, after = time.time() - started, read_delays() or {}
    waited = max([d - before.get(tid, 0.0) for tid, d in after.items()], default=0.0)
    return result, waited <= 0.05 * took


def peak_flops_of(device, bf16):
    """Peak FLOP/s of the device at the precision training runs at (bf16 or fp32), for MFU."""
    if device.type == "cuda":
        for name, flops in GPU_PEAK_FLOPS:
            if name in device_name(device):
                return flops
        print(f"Unknown GPU {device_name(device)!r}: MFU is against an H100's 989.5 TFLOP/s (add yours to GPU_PEAK_FLOPS in harness/hardware.py)")
        return 989.5e12
    if device.type == "mps":
        return next((flops for name, flops in MPS_PEAK_FLOPS if name in cpu_model()), 32.8e12)
    return cpu_peak_flops(torch.bfloat16 if bf16 else torch.float32)


def peak_memory_mb(device):
    """Peak GPU memory on CUDA; elsewhere the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1024 / 1024
    import resource  # Unix only
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux

