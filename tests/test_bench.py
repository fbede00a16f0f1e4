"""Benchmarks, kept out of the default run: `uv run pytest -m bench -s`.

They measure on this machine, with the `small` setup, what the overnight loop pays for: the model's
training throughput on train.py's code path against the anchor's (the reference design ported to
the device as-is), and the dataloader's speed against the model's appetite. Set AUTORESEARCH_CACHE
to a prepared `small` cache of a real corpus for figures worth quoting; without it they prepare one
from the standard library's documentation.

Each throughput is measured in a fresh process of its own (`python tests/test_bench.py PATH`),
because the memory settings train.py makes are per process.
"""
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TRAIN, train_definitions, write_corpus

pytestmark = pytest.mark.bench
SETUP_MARKER = "# Setup: tokenizer, model, optimizer, dataloader"
# train.py's departures from the reference code path, undone to get the anchor's. The anchor also
# compiles its optimizer step, as the reference does on every device.
ANCHOR_EDITS = [
    ('tune_process(device, COMPILE)',  # glibc's default malloc; the compiler checks the vector ISAs
     'None'),
    ('os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")',  # torch's default: no huge pages
     'None'),
    ("logits = 2 * softcap * torch.sigmoid(logits * (2 / softcap)) - softcap",  # the same function
     "logits = softcap * torch.tanh(logits / softcap)"),
    ('COMPILE_BY_BLOCK = device.type != "cuda"',  # the reference compiles the model whole
     'COMPILE_BY_BLOCK = False'),
]
BENCH_ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))  # anchor / train.py pairs, one process each


def bench_definitions(path):
    """train.py's definitions and hyperparameters (everything before its set-up), on `path`'s code."""
    source = open(TRAIN).read()
    if path == "anchor":
        for ours, reference in ANCHOR_EDITS:
            assert ours in source, f"train.py no longer has {ours!r}: update ANCHOR_EDITS in {__file__}"
            source = source.replace(ours, reference)
    module = train_definitions(source, until=SETUP_MARKER)
    assert module.SETUP == "small", "the benchmarks need a `small` cache"
    return module


def build(train, compile_model, compile_optimizer):
    tokenizer = train.Tokenizer.from_directory()
    config = train.GPTConfig(sequence_len=train.MAX_SEQ_LEN, vocab_size=tokenizer.get_vocab_size(), n_layer=4,
                             n_head=2, n_kv_head=2, n_embd=256, window_pattern="L")  # the anchor's model
    with torch.device("meta"):
        model = train.GPT(config)
    model.to_empty(device=train.device)
    model.init_weights()
    optimizer = model.setup_optimizer(compiled=compile_optimizer)
    if compile_model and train.COMPILE_BY_BLOCK:  # as train.py compiles it
        for block in model.transformer.h:
            block.compile(dynamic=False)
        model.head = torch.compile(model.head, dynamic=False)
        return tokenizer, model, model, optimizer
    return tokenizer, model, (torch.compile(model, dynamic=False) if compile_model else model), optimizer


def step_seconds(train, tokenizer, model, compiled, optimizer, batch_size=32, warmup=3, steps=8):
    """The median time of a training step (forward, backward, optimizer) after warm-up."""
    loader = train.make_dataloader(tokenizer, batch_size, train.MAX_SEQ_LEN, "train", device=train.device)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        x, y, _ = next(loader)
        with train.autocast_ctx:
            loss = compiled(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        train.synchronize(train.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:])


def measure_in_subprocess(path, cache, inductor_cache):
    env = dict(os.environ, AUTORESEARCH_CACHE=cache, TORCHINDUCTOR_CACHE_DIR=inductor_cache)
    out = subprocess.run([sys.executable, __file__, path], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.split()[-1])


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    cache = os.environ.get("AUTORESEARCH_CACHE")
    if not cache:
        cache = str(tmp_path_factory.mktemp("small_cache"))
        corpus = write_corpus(str(tmp_path_factory.mktemp("corpus")), 10_000_000)
        env = dict(os.environ, AUTORESEARCH_CACHE=cache)
        subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "--data", corpus, "--setup", "small"],
                       env=env, check=True, capture_output=True)
    return cache


def test_train_py_path_against_the_anchor_path(small_cache, tmp_path):
    # This machine's speed drifts between minutes (other work, clocks), which one run of each would
    # read as a difference between the paths. So the two alternate, one fresh process each, and
    # each round's ratio is taken between neighbours: drift slower than a round cancels out.
    inductor_cache = str(tmp_path / "inductor")
    measure_in_subprocess("train.py", small_cache, inductor_cache)  # fills the compile cache for both
    runs = {"anchor": [], "train.py": []}
    for _ in range(BENCH_ROUNDS):
        for path in runs:
            runs[path].append(measure_in_subprocess(path, small_cache, inductor_cache))
    ratios = sorted(a / b for a, b in zip(runs["anchor"], runs["train.py"]))
    tokens = 32 * 512
    print(f"\nanchor model (depth 4, B=32, T=512), {BENCH_ROUNDS} interleaved rounds: train.py path "
          f"{statistics.median(ratios):.2f}x the anchor's tokens/s (median; {ratios[0]:.2f}-{ratios[-1]:.2f}); "
          f"median {tokens / statistics.median(runs['train.py']):,.0f} against {tokens / statistics.median(runs['anchor']):,.0f} "
          f"tok/s (step seconds: anchor {[round(t, 3) for t in runs['anchor']]}, train.py {[round(t, 3) for t in runs['train.py']]})")
    assert statistics.median(ratios) >= 1.3


def test_dataloader_outruns_the_model_tenfold(small_cache, tmp_path):
    model_step = measure_in_subprocess("train.py", small_cache, str(tmp_path / "inductor"))
    os.environ["AUTORESEARCH_CACHE"] = small_cache
    sys.modules.pop("prepare", None)  # read the setup of this cache
    sys.path.insert(0, ROOT)
    import prepare
    loader = prepare.make_dataloader(prepare.Tokenizer.from_directory(), 32, prepare.MAX_SEQ_LEN, "train")
    next(loader)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 5:
        n += next(loader)[0].numel()
    loader_rate, model_rate = n / (time.perf_counter() - t0), 32 * prepare.MAX_SEQ_LEN / model_step
    print(f"\ndataloader {loader_rate:,.0f} tok/s, model {model_rate:,.0f} tok/s: {loader_rate / model_rate:.0f}x")
    assert loader_rate >= 10 * model_rate


if __name__ == "__main__":  # one measurement: python tests/test_bench.py anchor|train.py
    path = sys.argv[1]
    train = bench_definitions(path)
    compile_model = train.COMPILE
    compile_optimizer = train.COMPILE if path == "anchor" else train.COMPILE and train.device.type == "cuda"
    print(step_seconds(train, *build(train, compile_model, compile_optimizer)))
