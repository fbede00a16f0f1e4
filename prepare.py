"""
The judge: what val_bpb means, read top to bottom. The agent never edits this file.

    uv run prepare.py [--dataset NAME | --data PATH] [--num-shards N]
                      [--download-workers N] [--setup NAME]

Once, it gets the data (harness/data.py downloads or packs it), trains the tokenizer, freezes the
validation and test rows and records the setup in the cache, so that every experiment against one
cache is measured the same way. At run time train.py imports the setup's constants (MAX_SEQ_LEN,
TIME_BUDGET, EVAL_TOKENS, SETUP), Tokenizer, make_dataloader and evaluate_bpb from here, and
evaluate_bpb reports its number to the run record itself (harness/runrecord.py), which is what
Decide and Log read: train.py's own print of it is for humans.

In order: the setups, the tokenizer, the dataloader, the fixed metric, the command line. The
cache's layout and lock are in harness/cache.py (the judge's too); downloads and local corpora
are in harness/data.py, the device and its peaks in harness/hardware.py: neither imports from here.
"""

import argparse
import base64
import bisect
import errno
import json
import math
import os
import shutil
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from harness import guard, runrecord
from harness.cache import (CACHE_DIR, DATA_DIR, TEST_ROWS_FILE, TEST_SHARD, TOKENIZER_DIR, VAL_ROWS_FILE,
                           atomic_path, cache_lock, claim_cache, default_setup_name, read_recorded_setup,
                           write_json_atomically)
from harness.clock import NEVER_ASKED, SPAN, Budget, crash_run
from harness.errors import fail
# Not the judge's: where the shards come from, the FA3 kernel fetched once, and the device's name
# and memory peak for the record
from harness.attention import fetch_flash_attention_3
from harness.data import DATASETS, MIN_CHARS_PER_TOKEN, ROW_GROUP_SIZE, get_data
from harness.hardware import default_device, device_name, peak_memory_mb
# Compatibility: train.py commits made before 2026-11-30 import these hardware helpers from here,
# and `analysis.py --confirm` still runs such commits. Remove once no night from before then is
# confirmed.
from harness.attention import load_flash_attention_3  # noqa: F401
from harness.hardware import bf16_is_native, peak_flops_of, synchronize, tune_process  # noqa: F401

# ---------------------------------------------------------------------------
# Setups: the comparability contract. Numbers are recorded in the cache at prepare time and read
# back from there, so a cache keeps its numbers even if this table changes.

SETUPS = {
    # The reference, for one modern NVIDIA GPU.
    "full": dict(MAX_SEQ_LEN=2048, TIME_BUDGET=300, EVAL_TOKENS=40 * 524288, VOCAB_SIZE=8192),
    # CPUs, Apple silicon and small GPUs. Measured on a 2-core CPU: evaluating 2^18 tokens takes
    # ~10 s there, and a 4096-token vocabulary scored no better than 8192.
    "small": dict(MAX_SEQ_LEN=512, TIME_BUDGET=300, EVAL_TOKENS=2**18, VOCAB_SIZE=8192),
    # Seconds long: only proves an install works end to end (CI uses it).
    "smoke": dict(MAX_SEQ_LEN=128, TIME_BUDGET=5, EVAL_TOKENS=2**14, VOCAB_SIZE=512),
}

RECORDED = read_recorded_setup()
SETUP = RECORDED["setup"] if RECORDED else default_setup_name()
_numbers = RECORDED["constants"] if RECORDED else SETUPS[SETUP]
MAX_SEQ_LEN = _numbers["MAX_SEQ_LEN"]
TIME_BUDGET = _numbers["TIME_BUDGET"]
EVAL_TOKENS = _numbers["EVAL_TOKENS"]
VOCAB_SIZE = _numbers["VOCAB_SIZE"]
# Confirmation mode, set by `uv run analysis.py --confirm` alone: the judge also scores the test
# rows, which the loop never sees, so no test number can be fitted.
CONFIRM = (guard.CONFIRM or os.environ.get("AUTORESEARCH_CONFIRM")) == "1"  # the guard took it from train.py


def require_prepared():
    # The validation rows are written last: their presence means the cache is complete.
    if not os.path.exists(VAL_ROWS_FILE):
        fail(f"no prepared data in {CACHE_DIR}: run `uv run prepare.py` first")


# ---------------------------------------------------------------------------
# Tokenizer

SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]
TOKENIZER_MAX_CHARS = 1_000_000_000  # characters of training text the tokenizer sees at most
TOKENIZER_DOC_CHARS = 10_000         # each document cut to this many characters for it

def train_tokenizer(vocab_size):
    import rustbpe
    import tiktoken
    def texts():
        seen = 0
        for path in training_shards():
            for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=ROW_GROUP_SIZE):
                for text in batch.column("text").to_pylist():
                    text = text[:TOKENIZER_DOC_CHARS]
                    yield text
                    seen += len(text)
                    if seen >= TOKENIZER_MAX_CHARS:
                        return
    t0 = time.time()
    print(f"tokenizer: training a {vocab_size}-token BPE", flush=True)
    bpe = rustbpe.Tokenizer()
    n_merged = vocab_size - len(SPECIAL_TOKENS)
    bpe.train_from_iterator(texts(), n_merged, pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    if len(ranks) < n_merged:
        fail(f"the training text taught the tokenizer only {len(ranks)} of {n_merged} tokens; "
                           f"give it more text (at least {MIN_CHARS_PER_TOKEN * vocab_size:,} characters of varied text)")
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    tiktoken.Encoding("check", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    os.makedirs(TOKENIZER_DIR, exist_ok=True)
    ranks_path = os.path.join(TOKENIZER_DIR, "tokenizer.tiktoken")
    with atomic_path(ranks_path) as tmp, open(tmp, "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    write_json_atomically(os.path.join(TOKENIZER_DIR, "tokenizer.json"),
                          {"pattern": SPLIT_PATTERN, "special_tokens": specials, "bos": BOS_TOKEN})
    print(f"  done in {time.time() - t0:.1f}s")


class Tokenizer:
    """BPE from the cache, encoded and decoded by tiktoken. Loading reads data, never unpickles."""

    def __init__(self, enc, bos_token_id, token_bytes):
        self.enc = enc
        self.bos_token_id = bos_token_id
        self.token_bytes = token_bytes  # exact UTF-8 byte length per id; 0 for special tokens

    @classmethod
    def from_directory(cls, tokenizer_dir=TOKENIZER_DIR):
        require_prepared()
        return load_tokenizer(tokenizer_dir)

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def encode(self, text, prepend=None):
        """Token ids of a string, or a list of id lists for a list of strings (encoded in parallel)."""
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return [prepend] + ids if prepend is not None else ids
        ids = self.enc.encode_ordinary_batch(text, num_threads=8)
        return [[prepend] + row for row in ids] if prepend is not None else ids

    def decode(self, ids):
        return self.enc.decode(ids)


def load_tokenizer(tokenizer_dir=TOKENIZER_DIR):
    """Read the rank file (base64 token, rank per line) and the JSON of pattern and specials."""
    import tiktoken
    with open(os.path.join(tokenizer_dir, "tokenizer.json")) as f:
        meta = json.load(f)
    ranks = {}
    with open(os.path.join(tokenizer_dir, "tokenizer.tiktoken")) as f:
        for line in f:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    enc = tiktoken.Encoding("autoresearch", pat_str=meta["pattern"], mergeable_ranks=ranks,
                            special_tokens=meta["special_tokens"])
    token_bytes = np.zeros(enc.n_vocab, dtype=np.int32)
    for token, rank in ranks.items():
        token_bytes[rank] = len(token)  # from the bytes themselves: a token may be part of a character
    return Tokenizer(enc, meta["special_tokens"][meta["bos"]], token_bytes)



# ---------------------------------------------------------------------------
# Data loading

DOC_BUFFER = 1000  # documents the packing dataloader chooses from


def shard_paths():
    return sorted(os.path.join(DATA_DIR, f) for f in os.listdir(DATA_DIR) if f.startswith("shard_") and f.endswith(".parquet"))


def training_shards():
    return shard_paths()[:-1]


def validation_shard():
    return shard_paths()[-1]  # the last shard is pinned for validation


def document_batches(tokenizer, split):
    """Forever: (tokenized documents, each starting with BOS; epoch), one row group at a time."""
    paths = {"train": training_shards, "val": lambda: [validation_shard()], "test": lambda: [TEST_SHARD]}[split]()
    bos = tokenizer.get_bos_token_id()
    epoch = 1
    while True:
        for path in paths:
            pf = pq.ParquetFile(path)
            for i in range(pf.num_row_groups):
                texts = pf.read_row_group(i, columns=["text"]).column("text").to_pylist()
                yield tokenizer.encode(texts, prepend=bos), epoch
        epoch += 1


def packed_rows(batches, bos, T):
    """Forever: (row of T+1 tokens, epoch). Best-fit packing: every row starts with BOS; each gap
    takes the largest buffered document that fits; when none fits, the shortest is cropped to fill
    the row exactly and the rest of it goes back into the buffer behind a BOS of its own. No padding
    and nothing thrown away: every token of every document is trained on."""
    lengths, docs, pending, epoch = [], [], [], 1  # the buffer is kept sorted by length
    held = None  # the first batch of the next epoch, waiting until this epoch's documents are used

    def buffer(doc):
        i = bisect.bisect_left(lengths, len(doc))
        lengths.insert(i, len(doc))
        docs.insert(i, doc)

    while True:
        row = np.empty(T + 1, dtype=np.int64)
        pos = 0
        while pos < T + 1:
            while len(docs) < DOC_BUFFER:
                if not pending:
                    batch, batch_epoch = held or next(batches)
                    held = None
                    if batch_epoch != epoch and docs:  # never mix two epochs in the buffer
                        held = batch, batch_epoch
                        break
                    pending, epoch = batch[::-1], batch_epoch
                buffer(pending.pop())
            room = T + 1 - pos
            i = max(bisect.bisect_right(lengths, room) - 1, 0)  # largest that fits, else the shortest
            doc = docs.pop(i)
            lengths.pop(i)
            row[pos:pos + min(len(doc), room)] = doc[:room]
            pos += min(len(doc), room)
            if len(doc) > room:
                buffer([bos] + doc[room:])
        yield row, epoch


SERVED = {"train_tokens": 0}


def make_dataloader(tokenizer, B, T, split, device=None):
    """Forever: (inputs, targets, epoch), contiguous int64 tensors of shape (B, T) on the device.
    Targets are the inputs shifted by one."""
    assert split in ("train", "val")
    if split == "val" and guard.ACTIVE and not guard.SCORING:
        guard.refuse("the validation shard")
    device = torch.device(device or default_device())
    rows = packed_rows(document_batches(tokenizer, split), tokenizer.get_bos_token_id(), T)
    batch = np.empty((B, T + 1), dtype=np.int64)
    while True:
        for b in range(B):
            batch[b], epoch = next(rows)
        if split == "train":
            SERVED["train_tokens"] += B * T  # the run record's count of what training consumed
        pair = torch.from_numpy(np.stack([batch[:, :-1], batch[:, 1:]]))  # one copy: both contiguous
        if device.type == "cuda":  # pinned memory copies asynchronously; it needs a GPU
            pair = pair.pin_memory().to(device, non_blocking=True)
        else:
            pair = pair.to(device)
        yield pair[0], pair[1], epoch



# ---------------------------------------------------------------------------
# The fixed metric: do not change. val_bpb is defined here and nowhere else:
#   val_bpb = sum of -ln p(target) / (ln 2 * sum of the targets' UTF-8 bytes)
# over every target of the frozen validation rows that is not a special token.

def build_eval_rows(tokenizer, split, path, eval_tokens, seq_len):
    """Evaluation tokens, fixed once per cache: the first eval_tokens // seq_len packed rows of the
    split's shard (repeating it if it is short)."""
    n_rows = eval_tokens // seq_len
    rows = packed_rows(document_batches(tokenizer, split), tokenizer.get_bos_token_id(), seq_len)
    out = np.empty((n_rows, seq_len + 1), dtype=np.uint16 if tokenizer.get_vocab_size() <= 65536 else np.int32)
    epoch = 1
    for i in range(n_rows):
        out[i], epoch = next(rows)
    if epoch > 1:
        print(f"  warning: the {split} shard is shorter than {eval_tokens:,} tokens; evaluation repeats it")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, out)


BUDGETS = []  # the budget this process trains on (training_budget), which evaluate_bpb holds it to


def training_budget(device):
    """The judge's clock for this run's TIME_BUDGET (harness/clock.py's Budget): train.py ends its
    loop when `budget.over()` says so, once a step, and its schedules read `budget.progress()`."""
    BUDGETS.append(Budget(device, TIME_BUDGET, synchronize))
    return BUDGETS[-1]


def check_budget():
    """A crash, with its one line, when training did not keep to the judge's budget."""
    budget = BUDGETS[-1] if BUDGETS else None
    if budget is None and kept_its_own_budget():
        return {"kept_by": "train.py"}
    broke = budget.verdict() if budget else NEVER_ASKED
    if broke:
        crash_run(broke)
    return {"trained_seconds": round(budget.trained, 3), "steps": budget.steps, "untimed_steps": budget.untimed}


def kept_its_own_budget():
    """Compatibility: a train.py from before 2026-12-08 timed its own budget (its UNTIMED_STEPS and
    budget_clock); nights begun then are still continued and confirmed under this judge. Remove
    once no such night is (a train.py written since has no UNTIMED_STEPS)."""
    import __main__
    try:
        source = open(__main__.__file__).read()
    except (AttributeError, OSError):
        return False
    return "UNTIMED_STEPS" in source and "budget_clock(" in source and "training_budget" not in source


@torch.no_grad()
def evaluate_bpb(model, tokenizer, batch_size):
    """val_bpb: bits per byte of the model on the validation rows frozen in the cache (bits_per_byte
    below does the arithmetic). Which tokens are scored is fixed by the setup; batch_size only sets
    speed. In confirmation mode (AUTORESEARCH_CONFIRM=1, set by `uv run analysis.py --confirm`) the
    test rows are scored the same way and printed as test_bpb."""
    require_prepared()
    budget = check_budget()
    guard.SCORING.append(True)  # the judge reads its rows from here on
    clock = dict(SPAN)  # training has ended: the budget clock's span is final
    val_bpb, tokens, nbytes = bits_per_byte(model, tokenizer, np.load(VAL_ROWS_FILE, allow_pickle=False), batch_size,
                                            check=True)
    if not math.isfinite(val_bpb):
        fail("val_bpb is not a number: the model's logits are not finite (the run diverged)")
    result = {"val_bpb": val_bpb, "tokens": tokens, "bytes": nbytes, "setup": SETUP, "clock": clock,
              "budget": budget, **SERVED}
    if CONFIRM:
        if not os.path.exists(TEST_ROWS_FILE):  # compatibility: a cache from before test splits
            fail(f"{CACHE_DIR} has no test split to confirm on; prepare a new cache (AUTORESEARCH_CACHE=<new folder>)")
        result["test_bpb"] = bits_per_byte(model, tokenizer, np.load(TEST_ROWS_FILE, allow_pickle=False), batch_size)[0]
        print(f"test_bpb:         {result['test_bpb']:.6f}")
    record_result(result, next(model.parameters()).device)
    return val_bpb


def record_result(result, device):
    """The judge's own report of its number, into the run record Decide and Log read (harness/run.py):
    what train.py prints afterwards cannot change it."""
    runrecord.note("judge", {**result, "device": device_name(device), "peak_memory_mb": peak_memory_mb(device)})


def bits_per_byte(model, tokenizer, rows, batch_size, check=False):
    """(bits per byte, tokens scored, bytes scored): the summed cross-entropy (nats) of every target
    in `rows` that is not a special token, over ln 2 times their summed byte lengths (tokenizer.token_bytes: exact, 0 for specials). The judge
    computes the cross-entropy itself from the logits `model(x)` returns for the inputs alone, so no
    code in train.py decides what is scored, and with `check` it tests once that they are causal.
    The last batch is padded with ignored targets so that a compiled model sees one shape."""
    device = next(model.parameters()).device
    token_bytes = torch.from_numpy(tokenizer.token_bytes).to(device)
    nats, nbytes, tokens = 0.0, 0, 0  # summed in Python's double precision (MPS has no float64)
    for start in range(0, len(rows), batch_size):
        chunk = torch.from_numpy(rows[start:start + batch_size].astype(np.int64))
        x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()  # as training's: no recompile
        if len(chunk) < batch_size:
            pad = batch_size - len(chunk)
            x = torch.cat([x, torch.zeros(pad, x.size(1), dtype=x.dtype)])
            y = torch.cat([y, torch.full((pad, y.size(1)), -1, dtype=y.dtype)])
        x, y = x.to(device), y.to(device)
        logits = model_logits(model, x, tokenizer.get_vocab_size())
        counted = token_bytes[y.clamp(min=0)] * (y >= 0)  # bytes per target: 0 for specials and padding
        nats += summed_cross_entropy(logits, y, counted > 0)
        nbytes += counted.sum().item()
        tokens += (counted > 0).sum().item()
        if check and start == 0:
            check_causal(model, x, logits)
    return nats / (math.log(2) * nbytes), tokens, nbytes


def model_logits(model, x, vocab_size):
    """The model's logits for x, (B, T, vocab_size); a model may have padded its vocabulary."""
    logits = model(x)
    if not (torch.is_tensor(logits) and logits.shape[:2] == x.shape and logits.size(-1) >= vocab_size):
        got = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        fail(f"the judge calls model(x) and needs logits of shape {(*x.shape, vocab_size)}; got {got}")
    return logits[..., :vocab_size]


def check_causal(model, x, logits):
    """Change every token in the later half of the batch: the earlier half's logits must not move.
    bf16 rounding may flip a few of them by an ulp or so (kernels sum in an order that can follow
    memory layout), so the test is on the average change, which a model that sees later tokens
    moves by about the logits' own size."""
    half = x.size(1) // 2
    later = x.clone()
    later[:, half:] = (later[:, half:] + 1) % logits.size(-1)
    early = logits[:, :half].float().clone()  # a compiled model may reuse its output's memory
    moved = model_logits(model, later, logits.size(-1))[:, :half].float()
    change, size = (moved - early).abs().mean().item(), early.abs().mean().item()
    if change > 0.01 * size + 1e-6:
        fail(f"the model is not causal: changing tokens after position {half} moved the logits "
                 f"before it by {change:.3g} on average ({change / max(size, 1e-12):.0%} of their size); "
                 f"val_bpb would score tokens the model had already seen")


def summed_cross_entropy(logits, y, scored):
    """Sum of -log p(target) over the scored targets, a few rows at a time to bound the memory of
    the float32 temporaries (a `full` batch of logits alone is gigabytes)."""
    rows = max(1, 2**26 // (logits.size(1) * logits.size(2)))
    total = 0.0
    for i in range(0, len(y), rows):
        loss = F.cross_entropy(logits[i:i + rows].flatten(0, 1).float(), y[i:i + rows].flatten().clamp(min=0),
                               reduction="none")
        total += (loss * scored[i:i + rows].flatten()).sum().item()
    return total



# ---------------------------------------------------------------------------
# The command line

def tokenizer_vocab_size():
    try:
        with open(os.path.join(TOKENIZER_DIR, "tokenizer.json")) as f:
            return max(json.load(f)["special_tokens"].values()) + 1
    except (OSError, ValueError, KeyError):
        return None


def rows_shape(path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError):
        return None


def derive_from_data(constants, data_is_new):
    """The tokenizer, then the validation rows it encodes: each is (re)built when it is missing,
    when what it derives from was made anew, or when it does not fit the recorded setup."""
    if data_is_new or tokenizer_vocab_size() != constants["VOCAB_SIZE"]:
        if os.path.exists(TOKENIZER_DIR):
            print("tokenizer: the one in the cache does not belong to this data or setup; rebuilding it")
        for path in (VAL_ROWS_FILE, TEST_ROWS_FILE):  # validation first: its presence marks the cache complete
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(TOKENIZER_DIR, ignore_errors=True)
        train_tokenizer(constants["VOCAB_SIZE"])
    eval_tokens, seq_len = constants["EVAL_TOKENS"], constants["MAX_SEQ_LEN"]
    for split, path in (("val", VAL_ROWS_FILE), ("test", TEST_ROWS_FILE)):
        if split == "test" and not os.path.exists(TEST_SHARD):  # compatibility: remove with such caches
            print("test: none; this data was packed before test splits existed, and `uv run analysis.py "
                  "--confirm` needs a cache prepared anew (AUTORESEARCH_CACHE=<new folder>)")
        elif rows_shape(path) != (eval_tokens // seq_len, seq_len + 1):
            print(f"{'validation' if split == 'val' else 'test'}: packing {eval_tokens:,} tokens", flush=True)
            build_eval_rows(load_tokenizer(), split, path, eval_tokens, seq_len)


def prepare(dataset, data, num_shards, workers, setup):
    with cache_lock():
        setup, source, constants = claim_cache(setup, os.path.abspath(data) if data else dataset, SETUPS)
        data_is_new = get_data(source, setup, constants, num_shards, workers)
        derive_from_data(constants, data_is_new)
        print(fetch_flash_attention_3(torch.device(default_device())))  # so that train.py never needs the network
    print(f"ready: setup {setup} (MAX_SEQ_LEN={constants['MAX_SEQ_LEN']}, TIME_BUDGET={constants['TIME_BUDGET']}, "
          f"EVAL_TOKENS={constants['EVAL_TOKENS']}, VOCAB_SIZE={constants['VOCAB_SIZE']}), data {source}, "
          f"{len(training_shards())} training shard(s), cache {CACHE_DIR}")


def main():
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for autoresearch.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=sorted(DATASETS), help="dataset to download (default fineweb-edu)")
    source.add_argument("--data", metavar="PATH", help="pack a local corpus (.parquet, .txt, .md, .jsonl) instead")
    parser.add_argument("--num-shards", type=int, default=10, help="training shards to download (default 10)")
    parser.add_argument("--download-workers", type=int, default=8, help="parallel downloads (default 8)")
    parser.add_argument("--setup", choices=sorted(SETUPS), help="default: full with a CUDA GPU, else small")
    args = parser.parse_args()
    try:
        prepare(args.dataset, args.data, args.num_shards, args.download_workers, args.setup)
    except KeyboardInterrupt:
        fail("interrupted: nothing half-written was kept; run `uv run prepare.py` again to resume")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            fail(f"disk full while writing to {CACHE_DIR}; free space (or set AUTORESEARCH_CACHE "
                 f"to a bigger disk) and run `uv run prepare.py` again")
        raise


if __name__ == "__main__":
    main()
