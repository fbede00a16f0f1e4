"""README's promises, each a test that fails when it breaks.

Every test here was proven by breaking prepare.py or train.py on purpose and watching it fail.
Not tested twice: present, valid shards are not fetched again (test_prepare.py's
test_prepare_downloads_then_reruns_as_a_no_op_and_refetches_a_corrupt_shard counts a rerun's requests).
"""
import functools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from conftest import judged, ROOT, TRAIN, ShardServer, load_harness, load_prepare, stdlib_documents, train_definitions

sys.path.insert(0, ROOT)

# The judge leaves a run's first WARMUP_STEPS steps (0 .. WARMUP_STEPS - 1) out of training_seconds:
# they compile and warm up. On the CPU that is harness/clock.py's UNTIMED_STEPS default, 1.
WARMUP_STEPS = 1

def shard_texts(paths):
    return [t for p in paths for t in pq.read_table(p, columns=["text"]).column("text").to_pylist()]


def prepare_in_process(cache, data=None, **env):
    """`uv run prepare.py [--data PATH] --num-shards 2 --setup smoke`, without paying for a new Python."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        load_prepare(mp, cache).prepare(None, data, 2, 4, "smoke")


def copy_cache(src, dst, **constants):
    """A copy of a prepared cache whose recorded numbers differ from the SETUPS table by `constants`."""
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "setup.json")) as f:
        recorded = json.load(f)
    recorded["constants"].update(constants)
    with open(os.path.join(dst, "setup.json"), "w") as f:
        json.dump(recorded, f)
    return str(dst)


# ---------------------------------------------------------------------------
# A corpus of numbered documents, in order, every one with multi-byte characters

N_DOCS = 700
DOC_ID = re.compile(r"Document №(\d{4}) —")


@functools.lru_cache(maxsize=None)
def documents():
    """conftest's real English documents (parsing the standard library takes seconds: once)."""
    return [text for _, text in stdlib_documents()]


def numbered_documents():
    text = " ".join(documents())
    rng, docs, pos = random.Random(1), [], 0
    for i in range(N_DOCS):
        n = rng.randrange(300, 1500)
        docs.append(f"Document №{i:04d} — {text[pos:pos + n]} Fin, café.")
        pos += n
    return docs


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """(cache, documents in input order): a smoke cache packed by `--data` from one .jsonl file."""
    src = tmp_path_factory.mktemp("numbered_src")
    docs = numbered_documents()
    with open(src / "corpus.jsonl", "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    cache = tmp_path_factory.mktemp("numbered_cache")
    prepare_in_process(cache, str(src))
    return str(cache), docs


def ids_in(texts):
    return [int(i) for t in texts for i in DOC_ID.findall(t)]


# ---------------------------------------------------------------------------
# 1. No validation document ever reaches training: --data

def test_data_keeps_every_validation_document_out_of_training(numbered, monkeypatch):
    cache, docs = numbered
    prep = load_prepare(monkeypatch, cache)
    assert prep.validation_shard() not in prep.training_shards()
    val, train = shard_texts([prep.validation_shard()]), shard_texts(prep.training_shards())
    test = shard_texts([prep.TEST_SHARD])
    val_ids, train_ids, test_ids = ids_in(val), ids_in(train), ids_in(test)
    assert val_ids and sorted(val) == sorted(docs[i] for i in val_ids)  # whole documents, unchanged
    assert test_ids and sorted(test) == sorted(docs[i] for i in test_ids)
    assert sorted(val_ids + train_ids + test_ids) == list(range(N_DOCS))  # each document in one split only
    # ...and what training actually reads: one epoch of the training stream, document by document
    tok = prep.Tokenizer.from_directory()
    streamed = []
    for batch, epoch in prep.document_batches(tok, "train"):
        if epoch > 1:
            break
        streamed += [tok.decode(d[1:]) for d in batch]
    assert sorted(ids_in(streamed)) == sorted(train_ids)


# ---------------------------------------------------------------------------
# 2. --data shuffles the training documents and spreads validation evenly over the corpus

def test_data_shuffles_training_and_spreads_validation_evenly(numbered, monkeypatch):
    cache, docs = numbered
    prep = load_prepare(monkeypatch, cache)
    train_ids = ids_in(shard_texts(prep.training_shards()))  # in the order training reads them
    val_ids = sorted(ids_in(shard_texts([prep.validation_shard()])))
    # shuffled: in order, every neighbour would follow its predecessor; shuffled, about half do
    ascending = np.mean(np.diff(train_ids) > 0)
    assert 0.35 < ascending < 0.65, ascending
    assert abs(np.corrcoef(train_ids, np.arange(len(train_ids)))[0, 1]) < 0.2
    # validation: the setup's share of the corpus...
    fraction = min(0.1, 8 * prep.EVAL_TOKENS / sum(map(len, docs)))
    assert abs(len(val_ids) - fraction * N_DOCS) <= 1, (len(val_ids), fraction)
    # ...taken evenly: no stretch of the corpus much longer than 1/fraction without one
    gaps = np.diff([-1] + val_ids + [N_DOCS])
    assert gaps.max() <= 1.5 / fraction, gaps
    per_tenth = np.histogram(val_ids, bins=10, range=(0, N_DOCS))[0]
    assert per_tenth.min() >= 0.7 * len(val_ids) / 10, per_tenth


# ---------------------------------------------------------------------------
# A local HTTP server for downloads

def parquet_bytes(tmp_path, texts, name="shard.parquet"):
    path = tmp_path / name
    pq.write_table(pa.table({"text": texts}), path, row_group_size=64, compression="zstd")
    return path.read_bytes()


# ---------------------------------------------------------------------------
# 1. No validation document ever reaches training: downloads

REPO = "/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
VAL_WORD = " Xqkvw"  # only in the validation shard, hundreds of times: a tokenizer that saw it merges it
TEST_WORD = " Zjxpq"  # the same, for the test shard


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("download_src")
    docs = documents()[:280]
    train = [f"Training document {i}. {text}" for i, text in enumerate(docs[:200])]
    val = [f"Validation document №{j}:{VAL_WORD * 50} {text}" for j, text in enumerate(docs[200:240])]
    test = [f"Test document §{j}:{TEST_WORD * 50} {text}" for j, text in enumerate(docs[240:])]
    srv = ShardServer({f"{REPO}/shard_00000.parquet": parquet_bytes(tmp, train[0::2], "a.parquet"),
                       f"{REPO}/shard_00001.parquet": parquet_bytes(tmp, train[1::2], "b.parquet"),
                       f"{REPO}/shard_01821.parquet": parquet_bytes(tmp, test, "t.parquet"),
                       f"{REPO}/shard_01822.parquet": parquet_bytes(tmp, val, "c.parquet")})
    cache = tmp_path_factory.mktemp("download_cache")
    prepare_in_process(cache, HF_ENDPOINT=srv.url(""))
    yield str(cache), len(train)
    srv.shutdown()


def test_downloaded_validation_shard_never_reaches_training_or_the_tokenizer(downloaded, monkeypatch):
    cache, n_train = downloaded
    prep = load_prepare(monkeypatch, cache)
    assert os.path.basename(prep.validation_shard()) == "shard_01822.parquet"  # the dataset's last
    assert [os.path.basename(p) for p in prep.training_shards()] == ["shard_00000.parquet", "shard_00001.parquet"]
    tok = prep.Tokenizer.from_directory()
    assert len(tok.encode(VAL_WORD)) >= 4, tok.encode(VAL_WORD)  # the tokenizer never saw validation text
    assert len(tok.encode(TEST_WORD)) >= 4, tok.encode(TEST_WORD)  # nor test text
    # the training batches, for a whole epoch and a bit: every training document, no validation one
    loader = prep.make_dataloader(tok, 8, 128, "train", device="cpu")
    text, epoch = [], 1
    while epoch == 1:
        x, y, epoch = next(loader)
        text += [tok.decode(row) for row in torch.cat([x, y[:, -1:]], dim=1).tolist()]
    text = "".join(text)
    assert "№" not in text and "Xqkvw" not in text and "§" not in text and "Zjxpq" not in text
    # (a document's name is missing only where a row ends inside it)
    assert len(set(re.findall(r"Training document (\d+)\.", text))) > 0.9 * n_train


# ---------------------------------------------------------------------------
# 3. Downloads: a Content-Length mismatch is refused; so is a corrupt page in a complete file.
# (Present, valid shards are not fetched again: test_prepare.py counts the requests of a rerun.)

@pytest.fixture
def one_shard(tmp_path):
    body = parquet_bytes(tmp_path, documents()[:300])
    srv = ShardServer({"/shard.parquet": body})
    yield srv, "/shard.parquet", body
    srv.shutdown()


def nothing_left(folder):
    return not [f for f in os.listdir(folder) if ".part" in f or f == "dest.parquet"]


@pytest.mark.parametrize("claimed", [+1000, -1000], ids=["claims-more", "claims-less"])
def test_a_content_length_mismatch_is_refused(one_shard, tmp_path, monkeypatch, claimed):
    srv, path, body = one_shard
    mach = load_harness(monkeypatch, tmp_path / "cache", "data")
    dest = tmp_path / "dest.parquet"
    # The whole, valid file, under a Content-Length that does not match it: never kept
    srv.plan[path] = [(body, len(body) + claimed)] * 3
    with pytest.raises(OSError):
        mach.download_file(srv.url(path), str(dest), attempts=3, backoff=0.01)
    assert srv.hits[path] == 3 and nothing_left(tmp_path)
    # once the server sends what it claims, the retry keeps the right file
    srv.plan[path] = [(body, len(body) + claimed)]
    mach.download_file(srv.url(path), str(dest), attempts=3, backoff=0.01)
    assert srv.hits[path] == 5 and dest.read_bytes() == body


def corrupt_a_page(body, tmp_path):
    """The file with 16 bytes flipped in the middle of a column chunk's pages; footer untouched."""
    path = tmp_path / "probe.parquet"
    path.write_bytes(body)
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    at = start + chunk.total_compressed_size // 2
    bad = bytearray(body)
    bad[at:at + 16] = bytes(b ^ 0xFF for b in bad[at:at + 16])
    path.write_bytes(bytes(bad))
    assert pq.ParquetFile(path).metadata.num_rows == 300  # the footer still reads: the file looks whole
    with pytest.raises(Exception):
        pq.read_table(path)  # but its data does not
    return bytes(bad)


def test_a_corrupt_page_in_a_complete_file_is_refused(one_shard, tmp_path, monkeypatch):
    srv, path, body = one_shard
    mach = load_harness(monkeypatch, tmp_path / "cache", "data")
    bad = corrupt_a_page(body, tmp_path)
    assert not mach.verify_parquet(str(tmp_path / "probe.parquet"))
    dest = tmp_path / "dest.parquet"
    srv.plan[path] = [(bad, None)] * 3  # always corrupt: refused, nothing kept
    with pytest.raises(OSError):
        mach.download_file(srv.url(path), str(dest), attempts=3, backoff=0.01)
    assert srv.hits[path] == 3 and nothing_left(tmp_path)
    srv.plan[path] = [(bad, None)]  # corrupt once: fetched again
    mach.download_file(srv.url(path), str(dest), attempts=3, backoff=0.01)
    assert srv.hits[path] == 5 and dest.read_bytes() == body
    dest.write_bytes(bad)  # corrupt on disk: not taken as present, fetched again
    mach.download_file(srv.url(path), str(dest), attempts=3, backoff=0.01)
    assert srv.hits[path] == 6 and dest.read_bytes() == body


# ---------------------------------------------------------------------------
# 4. A long one-line file is split into documents (test_prepare.py covers long files with lines,
# and a 300,000-character line, which stays one document)

def test_one_huge_line_is_split_into_documents_keeping_every_character(tmp_path, monkeypatch):
    mach = load_harness(monkeypatch, tmp_path / "cache", "data")
    words = " ".join(documents()).encode("ascii", "ignore").decode().split()
    text = " ".join(words)
    text = (text * (2_600_000 // len(text) + 1))[:2_600_000]  # 2.6 MB, no line break at all
    path = tmp_path / "one_line.txt"
    path.write_text(text)
    docs = list(mach.local_documents([str(path)]))
    assert len(docs) >= 3
    assert "".join(docs) == text  # split, never cut: every character kept, in order
    assert max(map(len, docs)) <= 4 * mach.DOC_CHARS  # no document is a whole megabyte of one line


def test_one_huge_line_of_non_ascii_text_is_split_without_breaking_characters(tmp_path, monkeypatch):
    mach = load_harness(monkeypatch, tmp_path / "cache", "data")
    text = "xxx" + "Crème brûlée, naïve façade à São Paulo. " * 40_000  # 1.7 MB in one line
    encoded = text.encode("utf-8")
    assert encoded[1 << 20] & 0xC0 == 0x80  # byte 2**20 is inside a character
    path = tmp_path / "one_line.txt"
    path.write_bytes(encoded)
    docs = list(mach.local_documents([str(path)]))
    assert len(docs) >= 2 and "".join(docs) == text


# ---------------------------------------------------------------------------
# 5. A cache keeps its recorded numbers even if the SETUPS table changes later

def test_a_cache_keeps_its_recorded_numbers_when_the_table_changes(smoke_cache, tmp_path, monkeypatch, capsys):
    recorded = dict(MAX_SEQ_LEN=64, TIME_BUDGET=7, EVAL_TOKENS=2**12, VOCAB_SIZE=512)
    cache = copy_cache(smoke_cache, tmp_path / "cache", **recorded)  # recorded under an older table
    os.remove(os.path.join(cache, "val_rows.npy"))  # and not finished yet
    prep = load_prepare(monkeypatch, cache)
    assert prep.SETUP == "smoke" and prep.SETUPS["smoke"] != recorded
    assert (prep.MAX_SEQ_LEN, prep.TIME_BUDGET, prep.EVAL_TOKENS, prep.VOCAB_SIZE) == (64, 7, 2**12, 512)
    # a rerun finishes the cache with the recorded numbers, whatever the table says now
    monkeypatch.setitem(prep.SETUPS, "smoke", dict(MAX_SEQ_LEN=256, TIME_BUDGET=9, EVAL_TOKENS=2**13, VOCAB_SIZE=512))
    prep.prepare(None, None, 10, 1, None)
    assert np.load(prep.VAL_ROWS_FILE).shape == (2**12 // 64, 64 + 1)
    assert "ready: setup smoke (MAX_SEQ_LEN=64, TIME_BUDGET=7, EVAL_TOKENS=4096" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Whole runs of train.py

def run_train(cache, script=TRAIN, timeout=600):
    """`uv run train.py > run.log 2>&1`, as the agent runs it: (exit code, the log with its \\r)."""
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache), PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, script], cwd=os.path.dirname(script), env=env, timeout=timeout,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return result.returncode, result.stdout.decode()


STATUS = re.compile(r"step (\d+) \((\d+\.\d)%\)[^\r\n]*?dt: (\d+)ms[^\r\n]*?remaining: (\d+)s")


# ---------------------------------------------------------------------------
# 6. training_seconds reaches TIME_BUDGET, and exactly the warm-up steps are untimed

def test_training_time_counts_every_step_after_the_warm_up_and_reaches_the_budget(smoke_cache, monkeypatch):
    budget = load_prepare(monkeypatch, smoke_cache).TIME_BUDGET
    code, log = run_train(smoke_cache)
    assert code == 0, log[-3000:]
    status = [(int(s), float(pct), int(dt) / 1000, int(left)) for s, pct, dt, left in STATUS.findall(log)]
    steps, pct, dt, left = (list(column) for column in zip(*status))
    n = int(re.search(r"^num_steps:\s+(\d+)$", log, re.M).group(1))
    training_seconds = float(re.search(r"^training_seconds:\s+(\d+\.\d)$", log, re.M).group(1))
    assert steps == list(range(n)) and n > WARMUP_STEPS
    # A status line shows the time counted before its step (percent of the budget) and after it
    # (seconds remaining). The warm-up steps count nothing...
    assert pct[:WARMUP_STEPS + 1] == [0.0] * (WARMUP_STEPS + 1)
    assert left[:WARMUP_STEPS] == [budget] * WARMUP_STEPS
    # ...and every step after them counts its whole time (dt is rounded to 1 ms on the line)
    assert dt[WARMUP_STEPS] >= 0.003  # long enough to show in the next line's percentage
    for s in range(WARMUP_STEPS + 1, n):
        counted = sum(dt[WARMUP_STEPS:s])
        assert abs(pct[s] - 100 * counted / budget) <= 0.06 + 100 * 0.0005 * (s - WARMUP_STEPS) / budget, s
    timed = sum(dt[WARMUP_STEPS:])
    slack = 0.0005 * (n - WARMUP_STEPS)
    assert abs(training_seconds - timed) <= 0.05 + slack, (training_seconds, timed)
    # the budget is reached, by the last step and not before it
    assert training_seconds >= budget and left[-1] == 0
    assert timed - dt[-1] < budget + slack


# ---------------------------------------------------------------------------
# 8. A crash during the final evaluation still ends run.log with the traceback

def test_a_crash_in_the_final_evaluation_ends_the_log_with_its_traceback(smoke_cache, tmp_path):
    cache = copy_cache(smoke_cache, tmp_path / "cache", TIME_BUDGET=1)  # a shorter run, same code path
    source = open(TRAIN).read()
    assert source.count("model.eval()\n") == 1
    script = tmp_path / "train.py"
    script.write_text(source.replace("model.eval()\n", "model.eval()\nmodel.forward = lambda *args, **kwargs: 1 / 0\n"))
    code, log = run_train(cache, str(script))
    assert code != 0
    assert "val_bpb:" not in log
    lines = log.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):"))
    assert any("in evaluate_bpb" in line for line in lines[start:])  # it crashed inside the evaluation
    assert lines[-1] == "ZeroDivisionError: division by zero", lines[-12:]


# ---------------------------------------------------------------------------
# 7. The optimizer: AdamW as torch's, Muon as the design describes it

@pytest.fixture(scope="module")
def train(tmp_path_factory):
    """The definitions of train.py (everything above the hyperparameters) as a module."""
    cache = tmp_path_factory.mktemp("definitions_cache")  # never the user's; the smoke setup: no compiling
    (cache / "setup.json").write_text(json.dumps(dict(setup="smoke", source="none", constants=dict(
        MAX_SEQ_LEN=128, TIME_BUDGET=5, EVAL_TOKENS=2**14, VOCAB_SIZE=512))))
    with pytest.MonkeyPatch.context() as mp:
        load_prepare(mp, cache)
        return train_definitions()


ADAMW = dict(eps=1e-10, weight_decay=0.0)  # every AdamW group, with its lr and betas


def test_adamw_groups_step_as_torch_adamw(train):
    # the groups of a real model's optimizer, with the design's hyperparameters
    config = train.GPTConfig(sequence_len=32, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=256)
    model = train.GPT(config)  # on the CPU: the meta device would import seconds of torch for nothing
    groups = [g for g in model.setup_optimizer(unembedding_lr=0.004, embedding_lr=0.6, scalar_lr=0.5, matrix_lr=0.04,
                                               adam_betas=(0.8, 0.95), weight_decay=0.2).param_groups
              if g["kind"] == "adamw"]
    scale = (256 / 768) ** -0.5
    assert [(g["lr"], g["betas"], g["eps"], g["weight_decay"]) for g in groups] == [
        (0.004 * scale, (0.8, 0.95), 1e-10, 0.0), (0.6 * scale, (0.8, 0.95), 1e-10, 0.0),
        (0.6 * scale, (0.8, 0.95), 1e-10, 0.0), (0.5 * 0.01, (0.8, 0.95), 1e-10, 0.0), (0.5, (0.96, 0.95), 1e-10, 0.0)]
    # the same hyperparameters on fresh parameters: ours against torch.optim.AdamW, step by step
    torch.manual_seed(0)
    shapes = [(64, 256), (64, 256), (2, 256), (2,), (2,)]
    grad_scales = [1.0, 1e-9, 0.1, 1.0, 3.0]  # 1e-9: gradients near eps, where its placement shows
    ours = [torch.randn(s) for s in shapes]
    theirs = [p.clone() for p in ours]
    mine = train.MuonAdamW([dict(kind="adamw", params=[p], lr=g["lr"], betas=g["betas"], eps=g["eps"],
                                 weight_decay=g["weight_decay"]) for p, g in zip(ours, groups)])
    ref = torch.optim.AdamW([dict(params=[p], lr=g["lr"], betas=g["betas"], eps=g["eps"], weight_decay=g["weight_decay"])
                             for p, g in zip(theirs, groups)])
    for step in range(6):
        lrm = 1.0 - step / 8  # the schedule changes lr between steps
        for a, b, g, scale_g in zip(ours, theirs, groups, grad_scales):
            a.grad = torch.randn(a.shape) * scale_g
            b.grad = a.grad.clone()
        for opt in (mine, ref):
            for group, g in zip(opt.param_groups, groups):
                group["lr"] = g["lr"] * lrm
        mine.step()
        ref.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


POLAR_EXPRESS = [  # (a, b, c) for each of the 5 iterations, from the design
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def plain_polar_express(G, dtype=torch.bfloat16):
    """Normalise by 1.02 * Frobenius norm + 1e-6, then X = a X + X (b A + c A²) with A = XᵀX for a
    tall matrix, X on the other side with A = XXᵀ otherwise."""
    X = G.to(dtype)
    X = X / (X.norm() * 1.02 + 1e-6)
    for a, b, c in POLAR_EXPRESS:
        if X.size(0) > X.size(1):
            A = X.T @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.T
            X = a * X + (b * A + c * (A @ A)) @ X
    return X


class PlainMuon:
    """Muon for one matrix, written from the design, in float32 except the bf16 orthogonalisation."""

    def __init__(self, p):
        self.p = p.clone()
        self.buffer = torch.zeros_like(p)
        rows, cols = p.shape
        self.per_row = rows >= cols  # NorMuon: one value per row (tall, square), per column (wide)
        self.v = torch.zeros(rows, 1) if self.per_row else torch.zeros(1, cols)

    def step(self, grad, lr, momentum, wd, beta2):
        rows, cols = self.p.shape
        self.buffer = torch.lerp(self.buffer, grad, 1 - momentum)  # Nesterov momentum
        update = torch.lerp(grad, self.buffer, momentum)
        O = plain_polar_express(update).float()
        mean_square = (O ** 2).mean(dim=1 if self.per_row else 0, keepdim=True)
        self.v = beta2 * self.v + (1 - beta2) * mean_square
        U = O / self.v.sqrt()
        U = U * (O.norm() / U.norm())  # the update's overall norm unchanged
        lr = lr * math.sqrt(max(1.0, rows / cols))
        same_sign = (U * self.p) >= 0  # cautious weight decay (an update of exactly 0 in bf16 counts as agreeing)
        self.p = self.p - lr * U - lr * wd * self.p * same_sign


@pytest.mark.parametrize("shape", [(96, 32), (32, 96), (64, 64)], ids=["tall", "wide", "square"])
def test_polar_express_is_the_designed_iteration(train, shape):
    torch.manual_seed(0)
    for G in torch.randn(3, *shape):
        ours = train.polar_express(G).float()
        assert ((ours - plain_polar_express(G).float()).norm() / ours.norm()) < 0.01  # the same in bf16
        exact = plain_polar_express(G.double(), torch.float64)
        assert ((ours.double() - exact).norm() / exact.norm()) < 0.08  # and bf16 rounding, no more


@pytest.mark.parametrize("shape", [(96, 32), (32, 96), (64, 64)], ids=["tall", "wide", "square"])
def test_muon_steps_as_the_design_describes(train, shape):
    torch.manual_seed(0)
    params = [torch.randn(shape), torch.randn(shape)]  # one group, stepped as one stacked tensor
    refs = [PlainMuon(p) for p in params]
    opt = train.MuonAdamW([dict(kind="muon", params=params, lr=0.04, momentum=0.95, ns_steps=5, beta2=0.95,
                                weight_decay=0.2)])
    schedule = [(0.04, 0.85, 0.2), (0.04, 0.88, 0.15), (0.03, 0.9, 0.1), (0.02, 0.95, 0.05), (0.01, 0.95, 0.02)]
    for lr, momentum, wd in schedule:  # (lr, momentum, weight decay) change from step to step
        before = [p.clone() for p in params]
        for p in params:
            p.grad = torch.randn(shape)
        for ref, p in zip(refs, params):
            ref.step(p.grad.clone(), lr, momentum, wd, beta2=0.95)
        opt.param_groups[0].update(lr=lr, momentum=momentum, weight_decay=wd)
        opt.step()
        for p, b, ref in zip(params, before, refs):
            ours, theirs = p - b, ref.p - b
            # the step, up to its bf16 rounding (0.3%); every departure from the design tried moved it
            # by 1.3% to 2000%. The reference feeds the orthogonalisation the very bits train.py does
            # (lerps, as the design says): bf16 turns a 1e-7 difference in its input into ~2% in its output.
            assert ((ours - theirs).norm() / theirs.norm()) < 0.01
            p.copy_(ref.p)  # both go on from the same point


# ---------------------------------------------------------------------------
# 9. The metric: exact byte counts, and special tokens score nothing

class PositionwiseModel(torch.nn.Module):
    """logits (B, T, V) for position t from x[:, :t+1] alone: a bigram table on x[:, t] (zeros: a
    uniform guess), plus `bump` where the prefix x[b, :t+1] is one of `prefixes`. Called as the
    judge calls it, `model(x)`; also answers the older `model(x, y, reduction=...)` with losses."""

    def __init__(self, vocab, uniform=False, prefixes=(), bump=None):
        super().__init__()
        table = torch.zeros(vocab, vocab) if uniform else torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
        self.table = torch.nn.Parameter(table)
        self.prefixes, self.bump = set(prefixes), bump

    def forward(self, x, y=None, reduction="none"):
        logits = self.table[x].detach().clone()
        if self.prefixes:
            for b, row in enumerate(x.tolist()):
                for t in range(len(row)):
                    if tuple(row[:t + 1]) in self.prefixes:
                        logits[b, t] += self.bump
        if y is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction=reduction)


def val_targets(prep, tok):
    rows = np.load(prep.VAL_ROWS_FILE).astype(np.int64)
    specials = {tok.enc.encode_single_token(s) for s in prep.SPECIAL_TOKENS}
    return rows, specials


def test_bpb_counts_exact_bytes_and_skips_special_tokens(numbered, monkeypatch):
    prep = load_prepare(monkeypatch, numbered[0])
    tok = prep.Tokenizer.from_directory()
    rows, specials = val_targets(prep, tok)
    targets = rows[:, 1:].reshape(-1)
    scored = [int(t) for t in targets if int(t) not in specials]
    n_bytes = sum(len(tok.enc.decode_single_token_bytes(t)) for t in scored)  # bytes, from the tokens themselves
    n_chars = sum(len(tok.enc.decode_single_token_bytes(t).decode("utf-8", "replace")) for t in scored)
    assert len(scored) < len(targets) and n_chars != n_bytes  # BOS targets and multi-byte tokens are both there
    # a uniform guess loses ln(V) nats on every scored token
    expected = len(scored) * math.log2(tok.get_vocab_size()) / n_bytes
    model = PositionwiseModel(tok.get_vocab_size(), uniform=True)
    assert judged(prep, model, tok, 16) == pytest.approx(expected, rel=1e-5)


def test_predictions_of_special_tokens_change_nothing(numbered, monkeypatch):
    prep = load_prepare(monkeypatch, numbered[0])
    tok = prep.Tokenizer.from_directory()
    rows, specials = val_targets(prep, tok)
    before_special, before_other = set(), set()  # prefixes whose next token is special / is not
    for row in rows.tolist():
        for t in range(len(row) - 1):
            (before_special if row[t + 1] in specials else before_other).add(tuple(row[:t + 1]))
    before_special -= before_other
    assert len(before_special) > 20
    vocab = tok.get_vocab_size()
    bump = 10 * torch.randn(vocab, generator=torch.Generator().manual_seed(1))
    base = judged(prep, PositionwiseModel(vocab), tok, 16)
    moved = judged(prep, PositionwiseModel(vocab, prefixes=before_special, bump=bump), tok, 16)
    assert moved == pytest.approx(base, rel=1e-9)
    # the same change where the next token is an ordinary one does move the result
    control = sorted(before_other)[::max(1, len(before_other) // len(before_special))]
    assert abs(judged(prep, PositionwiseModel(vocab, prefixes=control, bump=bump), tok, 16) - base) > 1e-3 * base
