"""The cache: where the prepared data, tokenizer, frozen rows and recorded setup live, how a cache
is claimed for one setup and one source, and files written whole or not at all (part of the judge:
these paths are what the metric reads).

AUTORESEARCH_CACHE moves the cache (tests use a temporary one; a user can keep several).
"""

import fcntl
import json
import os
import shutil
from contextlib import contextmanager

from harness.errors import fail

CACHE_DIR = os.environ.get("AUTORESEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
DATA_DIR = os.path.join(CACHE_DIR, "data")
TOKENIZER_DIR = os.path.join(CACHE_DIR, "tokenizer")
SETUP_FILE = os.path.join(CACHE_DIR, "setup.json")
VAL_ROWS_FILE = os.path.join(CACHE_DIR, "val_rows.npy")
# The test split: documents that neither training nor validation ever see, and rows packed from
# them like the validation rows; only `uv run analysis.py --confirm` scores them.
TEST_SHARD = os.path.join(DATA_DIR, "test.parquet")
TEST_ROWS_FILE = os.path.join(CACHE_DIR, "test_rows.npy")
PEAK_FLOPS_FILE = os.path.join(CACHE_DIR, "peak_flops.json")  # CPU matmul peaks, measured once per machine
ISA_CHECKS_FILE = os.path.join(CACHE_DIR, "isa_checks.json")  # the compiler's vector ISA checks, passed once per machine


# ---------------------------------------------------------------------------
# Files in the cache: written whole or not at all

def read_recorded_setup():
    """The setup recorded in the cache, or None when prepare has not run here."""
    try:
        with open(SETUP_FILE) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        fail(f"{SETUP_FILE} is unreadable; delete {CACHE_DIR} and run `uv run prepare.py` again")


def default_setup_name():
    import torch  # here, not at the top: the commands that only read the cache's paths stay torch-free
    return "full" if torch.cuda.is_available() else "small"


@contextmanager
def scratch_dir(path):
    """A fresh temporary folder, removed however the block ends: a full disk gets its space back."""
    shutil.rmtree(path, ignore_errors=True)  # left by a killed run
    os.makedirs(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def atomic_path(path):
    """A temporary name beside path to write to; it replaces path only if the block completes, so
    an interruption or a full disk never leaves a half-written file under the real name."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomically(path, obj):
    """JSON written whole or not at all, and on the disk before it replaces the old (fsync): an
    interruption, a full disk or a power cut never leaves {} where a pending re-run was kept."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def read_json(path):
    """A dict kept in the cache, or {} where there is none, it is unreadable or of another making."""
    try:
        with open(path) as f:
            kept = json.load(f)
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}


# ---------------------------------------------------------------------------
# The cache: one setup and one source per cache, one prepare at a time

def has_data():
    return os.path.isdir(DATA_DIR) and any(f.startswith("shard_") for f in os.listdir(DATA_DIR))


def holds_prepared_files():
    return has_data() or os.path.exists(TOKENIZER_DIR) or os.path.exists(VAL_ROWS_FILE)


@contextmanager
def cache_lock():
    """One prepare at a time on a cache: a second one waits, then finds the first one's work done."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(os.path.join(CACHE_DIR, ".prepare.lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting: another prepare is running on {CACHE_DIR}", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the process dies


def claim_cache(setup, source, setups):
    """(setup, source, constants) of this cache: the recorded ones, or for a new cache the ones asked
    for (constants from `setups`, prepare.py's table), recorded before anything else is written so
    that nothing of another setup mixes in."""
    recorded = read_recorded_setup()
    if recorded and not holds_prepared_files():  # claimed by a prepare that got nothing (no network)
        recorded = None
        shutil.rmtree(DATA_DIR, ignore_errors=True)
    if recorded:
        if (setup or recorded["setup"], source or recorded["source"]) != (recorded["setup"], recorded["source"]):
            fail(f"{CACHE_DIR} already holds the {recorded['setup']} setup of {recorded['source']}; "
                               f"prepare {setup or recorded['setup']} of {source or recorded['source']} in another "
                               f"cache: AUTORESEARCH_CACHE=<new folder> uv run prepare.py ...")
        return recorded["setup"], recorded["source"], recorded["constants"]
    if holds_prepared_files():
        fail(f"{CACHE_DIR} holds prepared files but no record of their setup ({SETUP_FILE}); "
                           f"move them away, or prepare in another cache: AUTORESEARCH_CACHE=<new folder>")
    source = source or "fineweb-edu"
    if setup is None:
        setup = default_setup_name()
        why = "a CUDA GPU is present" if setup == "full" else "no CUDA GPU found"
        print(f"setup: {setup.upper()} ({why}; --setup NAME chooses another of {', '.join(setups)})")
    constants = setups[setup]
    write_json_atomically(SETUP_FILE, dict(setup=setup, source=source, constants=constants))
    return setup, source, constants
