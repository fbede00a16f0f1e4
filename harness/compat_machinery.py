"""Compatibility: train.py commits made from 2026-11-30 to 2026-12-04 import their hardware helpers
and the budget clock from a top-level machinery.py, which is now harness/hardware.py and
harness/clock.py. Confirm and the incumbent's runs copy this file into their worktree as
machinery.py (harness/run.py's judged_worktree), so such a commit runs under today's judge.
Remove once no night from before 2026-12-05 is confirmed or continued."""

from harness.attention import load_flash_attention_3  # noqa: F401
from harness.clock import budget_clock  # noqa: F401
from harness.hardware import (bf16_is_native, default_device, device_name, peak_flops_of,  # noqa: F401
                              peak_memory_mb, synchronize, tune_process)
