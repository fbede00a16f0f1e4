"""prepare.py: downloads, local packing, tokenizer, dataloader, the metric and its error messages."""
import errno
import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import KEEP_BUDGET, judged, ROOT, ShardServer, load_harness, load_prepare, run_prepare, stdlib_documents, write_corpus

sys.path.insert(0, ROOT)
from harness.data import DOC_CHARS  # noqa: E402


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------
# Downloads, against a local HTTP server

def parquet_bytes(tmp_path, texts, name):
    path = tmp_path / name
    pq.write_table(pa.table({"text": texts}), path, row_group_size=64, compression="zstd")
    return path.read_bytes()


@pytest.fixture
def server(tmp_path):
    docs = [text for _, text in stdlib_documents()]
    repo = "/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
    files = {
        f"{repo}/shard_00000.parquet": parquet_bytes(tmp_path, docs[0::3], "a.parquet"),
        f"{repo}/shard_00001.parquet": parquet_bytes(tmp_path, docs[1::3], "b.parquet"),
        f"{repo}/shard_01821.parquet": parquet_bytes(tmp_path, docs[2::6], "c.parquet"),  # test
        f"{repo}/shard_01822.parquet": parquet_bytes(tmp_path, docs[5::6], "d.parquet"),  # validation
    }
    srv = ShardServer(files)
    yield srv
    srv.shutdown()


def test_download_retries_until_the_server_recovers(server, tmp_path, monkeypatch):
    mach = load_harness(monkeypatch, tmp_path / "cache", "data")
    path = "/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_00000.parquet"
    server.failures[path] = 2
    dest = tmp_path / "shard.parquet"
    mach.download_file(server.endpoint + path, str(dest), backoff=0.01)
    assert server.hits[path] == 3
    assert dest.read_bytes() == server.files[path]


def test_a_mirror_that_compresses_is_downloaded_whole(server, tmp_path, monkeypatch):
    mach = load_harness(monkeypatch, tmp_path / "cache", "data")
    server.compress = True
    path = "/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_00000.parquet"
    dest = tmp_path / "shard.parquet"
    mach.download_file(server.endpoint + path, str(dest), attempts=1)
    assert dest.read_bytes() == server.files[path]


def test_truncated_download_is_fetched_again_and_never_kept(server, tmp_path, monkeypatch):
    mach = load_harness(monkeypatch, tmp_path / "cache", "data")
    path = "/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_00001.parquet"
    dest = tmp_path / "shard.parquet"
    server.truncate[path] = 1
    mach.download_file(server.endpoint + path, str(dest), backoff=0.01)
    assert server.hits[path] == 2 and dest.read_bytes() == server.files[path]

    server.truncate[path] = 99  # never whole: the download fails and leaves nothing behind
    dest2 = tmp_path / "other.parquet"
    with pytest.raises(OSError, match="not a valid parquet"):
        mach.download_file(server.endpoint + path, str(dest2), attempts=3, backoff=0.01)
    assert not dest2.exists() and not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_prepare_downloads_then_reruns_as_a_no_op_and_refetches_a_corrupt_shard(server, tmp_path):
    cache = tmp_path / "cache"
    env = {"HF_ENDPOINT": server.endpoint}
    result = run_with_env(cache, env, "--num-shards", "2", "--setup", "smoke")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(cache / "data")) == ["shard_00000.parquet", "shard_00001.parquet", "shard_01822.parquet",
                                                  "test.parquet"]
    assert "ready: setup smoke" in result.stdout and "2 training shard(s)" in result.stdout
    assert (cache / "data" / "test.parquet").read_bytes() == server.files[
        "/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_01821.parquet"]
    test_rows = (cache / "test_rows.npy").read_bytes()
    hits = dict(server.hits)

    again = run_with_env(cache, env, "--num-shards", "2")
    assert again.returncode == 0 and server.hits == hits  # nothing fetched twice
    assert "4 of 4 shards" in again.stdout

    # a cache from before test splits: the next prepare fetches the test shard and touches nothing else
    os.remove(cache / "data" / "test.parquet")
    os.remove(cache / "test_rows.npy")
    before = {f: (cache / f).read_bytes() for f in ("val_rows.npy", "tokenizer/tokenizer.tiktoken", "data/shard_00000.parquet")}
    upgraded = run_with_env(cache, env, "--num-shards", "2")
    assert upgraded.returncode == 0 and "test: packing" in upgraded.stdout, upgraded.stderr
    assert (cache / "test_rows.npy").read_bytes() == test_rows
    assert before == {f: (cache / f).read_bytes() for f in before}
    hits = dict(server.hits)

    shard = cache / "data" / "shard_00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])  # damaged on disk
    fixed = run_with_env(cache, env, "--num-shards", "2")
    assert fixed.returncode == 0, fixed.stderr
    path = "/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_00001.parquet"
    assert server.hits[path] == hits[path] + 1 and shard.read_bytes() == server.files[path]


def run_with_env(cache, extra_env, *args):
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache), **extra_env)
    return subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_no_network_gives_one_line_naming_data_and_data_then_works(tmp_path, corpus):
    cache = tmp_path / "cache"
    result = run_with_env(cache, {"HF_ENDPOINT": "http://127.0.0.1:9"}, "--setup", "smoke")
    assert_one_line_error(result, "--data", "no network")
    # the advice works in the same cache: the failed download left no claim behind
    assert run_with_env(cache, {}, "--data", corpus, "--setup", "smoke").returncode == 0


# ---------------------------------------------------------------------------
# Local data (--data)

def test_data_packs_every_file_kind(tmp_path, monkeypatch):
    docs = [text for _, text in stdlib_documents()]
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i, text in enumerate(docs[:60]):
        (src / f"doc{i}.txt").write_text(text)
    for i, text in enumerate(docs[60:120]):
        (src / "sub" / f"page{i}.md").write_text(text)
    with open(src / "rows.jsonl", "w") as f:
        for text in docs[120:180]:
            f.write(json.dumps({"text": text, "id": 1}) + "\n")
    pq.write_table(pa.table({"text": docs[180:240], "url": ["x"] * 60}), src / "table.parquet")
    (src / "notes.csv").write_text("ignored,file\n")
    cache = tmp_path / "cache"
    run_prepare(cache, "--data", str(src), "--setup", "smoke")
    prep = load_prepare(monkeypatch, cache)
    packed = [t for p in prep.shard_paths() for t in pq.read_table(p).column("text").to_pylist()]
    joined = "\n".join(packed)
    for i in (0, 59, 60, 119, 120, 179, 180, 239):  # a document from each kind made it in
        assert docs[i][:300] in joined
    assert "ignored,file" not in joined
    assert len(prep.shard_paths()) == 2  # one training shard, the validation shard pinned last
    val = pq.read_table(prep.validation_shard()).column("text").to_pylist()
    train = pq.read_table(prep.training_shards()[0]).column("text").to_pylist()
    assert val and not set(val) & set(train)


@pytest.mark.parametrize("case", ["missing", "empty", "no_text", "too_little", "no_text_column"])
def test_bad_data_folders_give_one_line(tmp_path, case):
    src = tmp_path / "src"
    if case != "missing":
        src.mkdir()
    if case == "no_text":
        (src / "a.txt").write_text("   \n\n  ")
        (src / "b.jsonl").write_text('{"title": "no text field"}\n')
    if case == "too_little":
        (src / "a.txt").write_text("A little text, far too little for a vocabulary. " * 50)
    if case == "no_text_column":
        pq.write_table(pa.table({"body": ["some words"] * 10}), src / "t.parquet")
    result = run_prepare(tmp_path / "cache", "--data", str(src), "--setup", "smoke", check=False)
    expected = {"missing": "no such file", "empty": "no .parquet, .txt", "no_text": "51,200",
                "too_little": "51,200", "no_text_column": "no `text` column"}[case]
    assert_one_line_error(result, expected)


def test_non_utf8_bytes_are_replaced_with_a_warning(tmp_path, monkeypatch):
    src = write_corpus(str(tmp_path / "src"), 200_000)
    with open(os.path.join(src, "latin1.txt"), "wb") as f:
        f.write("Caf\xe9 cr\xe8me, na\xefve fa\xe7ade.\n".encode("latin-1") * 20)
    cache = tmp_path / "cache"
    result = run_prepare(cache, "--data", src, "--setup", "smoke")
    assert "latin1.txt: 20 lines were not valid UTF-8" in result.stdout
    prep = load_prepare(monkeypatch, cache)
    texts = [t for p in prep.shard_paths() for t in pq.read_table(p).column("text").to_pylist()]
    assert any("Caf\ufffd cr\ufffdme" in t for t in texts)


def test_one_huge_file_is_split_into_documents(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    text = "\n\n".join(t for _, t in stdlib_documents())
    (src / "everything.txt").write_text(text)
    (src / "one_line.txt").write_text(text.replace("\n", " ")[:300_000])  # no line breaks at all
    cache = tmp_path / "cache"
    run_prepare(cache, "--data", str(src), "--setup", "smoke")
    prep = load_prepare(monkeypatch, cache)
    docs = [t for p in prep.shard_paths() + [prep.TEST_SHARD] for t in pq.read_table(p).column("text").to_pylist()]
    assert len(docs) > 50 and max(map(len, docs)) <= 4 * DOC_CHARS
    assert sum(map(len, docs)) == len(text) + 300_000  # split, not cut: every character kept


def split_documents(prep):
    def texts(paths):
        return [t for p in paths for t in pq.read_table(p).column("text").to_pylist()]
    return texts(prep.training_shards()), texts([prep.validation_shard()]), texts([prep.TEST_SHARD])


def test_data_splits_share_no_document_and_the_test_rows_stay_frozen(smoke_cache, tmp_path, monkeypatch, corpus):
    prep = load_prepare(monkeypatch, smoke_cache)
    train, val, test = split_documents(prep)
    assert val and test and abs(len(val) - len(test)) <= 1  # two even samples of the same size
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    test_rows = np.load(prep.TEST_ROWS_FILE)
    assert test_rows.shape == np.load(prep.VAL_ROWS_FILE).shape and not np.array_equal(test_rows, np.load(prep.VAL_ROWS_FILE))
    cache = tmp_path / "cache"
    shutil.copytree(smoke_cache, cache)
    run_prepare(cache, "--data", corpus)
    assert np.array_equal(np.load(cache / "test_rows.npy"), test_rows)  # a second prepare leaves them be


def test_a_cache_packed_before_test_splits_says_so_and_keeps_everything(smoke_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(smoke_cache, cache)
    os.remove(cache / "data" / "test.parquet")
    os.remove(cache / "test_rows.npy")
    before = {f: (cache / f).read_bytes() for f in ("val_rows.npy", "tokenizer/tokenizer.tiktoken", "data/shard_00000.parquet")}
    result = run_prepare(cache)
    assert "test: none" in result.stdout and "--confirm` needs a cache prepared anew" in result.stdout
    assert before == {f: (cache / f).read_bytes() for f in before} and not (cache / "test_rows.npy").exists()


def test_the_judge_scores_the_test_rows_only_in_confirmation_mode(smoke_cache):
    code = ("import sys; sys.path.insert(0, 'tests'); import prepare, test_prepare as t; "
            "tok = prepare.Tokenizer.from_directory(); "
            f"{KEEP_BUDGET}print('val_bpb', prepare.evaluate_bpb(t.Bigram(tok.get_vocab_size()), tok, 16))")
    runs = {}
    for confirm in ("0", "1"):
        env = dict(os.environ, AUTORESEARCH_CACHE=smoke_cache, AUTORESEARCH_CONFIRM=confirm)
        runs[confirm] = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        assert runs[confirm].returncode == 0, runs[confirm].stderr
    assert "test_bpb" not in runs["0"].stdout
    lines = runs["1"].stdout.splitlines()
    assert re.fullmatch(r"test_bpb: +\d+\.\d{6}", lines[0]) and lines[1] == runs["0"].stdout.strip()
    assert float(lines[0].split()[1]) != float(lines[1].split()[1])  # other tokens, another number


def test_a_few_long_documents_still_pin_one_for_validation(tmp_path, monkeypatch):
    text = "\n\n".join(t for _, t in stdlib_documents())[:600_000]
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "long.jsonl", "w") as f:
        for i in range(5):  # fewer documents than 1 / the validation fraction
            f.write(json.dumps({"text": text[i * 120_000:(i + 1) * 120_000]}) + "\n")
    cache = tmp_path / "cache"
    run_prepare(cache, "--data", str(src), "--setup", "smoke")
    prep = load_prepare(monkeypatch, cache)
    assert pq.read_table(prep.validation_shard()).column("text").to_pylist() == [text[480_000:600_000]]
    assert np.load(cache / "val_rows.npy").shape == (2**14 // 128, 129)

    (src / "long.jsonl").write_text(json.dumps({"text": text}) + "\n")
    assert_one_line_error(run_prepare(tmp_path / "cache2", "--data", str(src), "--setup", "smoke", check=False),
                          "holds 1 document(s)")


def test_disk_full_keeps_nothing_half_written(tmp_path, monkeypatch, corpus):
    prep = load_prepare(monkeypatch, tmp_path / "cache")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(prep.pq, "write_table", full)
    monkeypatch.setattr(sys, "argv", ["prepare.py", "--data", corpus, "--setup", "smoke"])
    with pytest.raises(SystemExit) as exit_info:
        prep.main()
    assert "disk full" in str(exit_info.value)
    assert not os.path.exists(prep.DATA_DIR)  # no half-packed data folder is taken as finished


# ---------------------------------------------------------------------------
# Setups and the cache

def test_a_cache_refuses_another_setup_or_dataset_and_reruns_quietly(smoke_cache, tmp_path):
    other = write_corpus(str(tmp_path / "other"), 100_000)
    result = run_prepare(smoke_cache, "--setup", "small", check=False)
    assert_one_line_error(result, "already holds the smoke setup", "AUTORESEARCH_CACHE")
    result = run_prepare(smoke_cache, "--data", other, check=False)
    assert_one_line_error(result, "already holds the smoke setup")
    again = run_prepare(smoke_cache)
    assert "already" in again.stdout and "ready: setup smoke" in again.stdout


def test_a_cache_whose_data_was_deleted_keeps_its_setup_and_rebuilds_all_it_derived(tmp_path, corpus):
    cache = tmp_path / "cache"
    run_prepare(cache, "--data", corpus, "--setup", "smoke")
    tokenizer = (cache / "tokenizer" / "tokenizer.tiktoken").read_bytes()
    shutil.rmtree(cache / "data")
    other = write_corpus(str(tmp_path / "other"), 100_000)
    for args in (["--setup", "small"], ["--data", other]):  # nothing may sit beside the old tokenizer
        assert_one_line_error(run_prepare(cache, *args, check=False), "already holds the smoke setup")
        assert (cache / "tokenizer" / "tokenizer.tiktoken").read_bytes() == tokenizer  # nothing lost
    again = run_prepare(cache, "--data", corpus)
    assert "rebuilding" in again.stdout and "ready: setup smoke" in again.stdout
    assert np.load(cache / "val_rows.npy").shape == (2**14 // 128, 129)


def test_a_tokenizer_or_validation_rows_of_another_setup_are_rebuilt(tmp_path, corpus):
    cache = tmp_path / "cache"
    run_prepare(cache, "--data", corpus, "--setup", "smoke")
    meta = json.loads((cache / "tokenizer" / "tokenizer.json").read_text())
    meta["special_tokens"] = {k: v + 1 for k, v in meta["special_tokens"].items()}  # a 513-token vocabulary
    (cache / "tokenizer" / "tokenizer.json").write_text(json.dumps(meta))
    np.save(cache / "val_rows.npy", np.zeros((4, 65), dtype=np.uint16))  # rows of another sequence length
    result = run_prepare(cache)
    assert "rebuilding" in result.stdout and "validation: packing" in result.stdout
    assert max(json.loads((cache / "tokenizer" / "tokenizer.json").read_text())["special_tokens"].values()) == 511
    assert np.load(cache / "val_rows.npy").shape == (2**14 // 128, 129)


def test_prepared_files_without_a_record_of_their_setup_are_refused_and_kept(smoke_cache, tmp_path, corpus):
    cache = tmp_path / "cache"
    shutil.copytree(smoke_cache, cache)
    os.remove(cache / "setup.json")
    assert_one_line_error(run_prepare(cache, "--data", corpus, "--setup", "smoke", check=False),
                          "no record of their setup")
    assert sorted(os.listdir(cache / "data")) == sorted(os.listdir(os.path.join(smoke_cache, "data")))


def test_a_second_prepare_on_one_cache_waits_for_the_first(smoke_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(smoke_cache, cache)
    with open(cache / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a prepare is running
        env = dict(os.environ, AUTORESEARCH_CACHE=str(cache))
        second = subprocess.Popen([sys.executable, os.path.join(ROOT, "prepare.py")], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "waiting: another prepare is running" in second.stdout.readline()
        assert second.poll() is None
    out, err = second.communicate(timeout=120)  # the first finished: the second goes on
    assert second.returncode == 0 and "ready: setup smoke" in out, err


def test_default_setup_is_small_without_a_gpu_and_says_so(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("Not enough text for an 8192-token vocabulary. " * 100)
    result = run_prepare(tmp_path / "cache", "--data", str(src), check=False)
    assert "setup: SMALL (no CUDA GPU found" in result.stdout
    assert_one_line_error(result, "819,200")


def test_constants_come_from_the_recorded_setup(smoke_cache, monkeypatch):
    prep = load_prepare(monkeypatch, smoke_cache)
    assert prep.SETUP == "smoke"
    assert (prep.MAX_SEQ_LEN, prep.TIME_BUDGET, prep.EVAL_TOKENS, prep.VOCAB_SIZE) == (128, 5, 2**14, 512)
    assert prep.SETUPS["full"] == dict(MAX_SEQ_LEN=2048, TIME_BUDGET=300, EVAL_TOKENS=40 * 524288, VOCAB_SIZE=8192)


def test_utilities_before_prepare_say_what_to_run(tmp_path):
    code = "from prepare import Tokenizer; Tokenizer.from_directory()"
    env = dict(os.environ, AUTORESEARCH_CACHE=str(tmp_path / "nothing"))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert_one_line_error(result, "run `uv run prepare.py` first")


# ---------------------------------------------------------------------------
# Tokenizer

TEXTS = ["Hello, world! It's 2026 and we're testing 12345 numbers.",
         "Crème brûlée, naïve façade, São Paulo, Zürich, Ångström.",
         "日本語のテキストと中文文本，还有한국어。",
         "Emoji: 🚀🔥👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵, math ∑∫√ and tabs\tand\r\nnewlines\n\n"]


def test_tokenizer_round_trips_and_counts_exact_bytes(smoke_cache, monkeypatch):
    prep = load_prepare(monkeypatch, smoke_cache)
    tok = prep.Tokenizer.from_directory()
    assert tok.get_vocab_size() == 512
    assert tok.decode([tok.get_bos_token_id()]) == "<|reserved_0|>"
    assert tok.token_bytes[tok.get_bos_token_id()] == 0
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.token_bytes[ids].sum() == len(text.encode("utf-8"))
    # a token inside a multi-byte character counts its real bytes, not a decoded replacement char
    for i in range(256):
        assert tok.token_bytes[i] == len(tok.enc.decode_single_token_bytes(i))
    batch = tok.encode(TEXTS, prepend=tok.get_bos_token_id())
    assert [row[0] for row in batch] == [tok.get_bos_token_id()] * len(TEXTS)
    assert [row[1:] for row in batch] == [tok.encode(t) for t in TEXTS]


def test_tokenizer_is_stored_as_plain_data(smoke_cache):
    files = sorted(os.listdir(os.path.join(smoke_cache, "tokenizer")))
    assert files == ["tokenizer.json", "tokenizer.tiktoken"]
    meta = json.load(open(os.path.join(smoke_cache, "tokenizer", "tokenizer.json")))
    assert meta["bos"] == "<|reserved_0|>" and len(meta["special_tokens"]) == 4


# ---------------------------------------------------------------------------
# Dataloader

def synthetic_batches(lengths, bos=0, epochs=1):
    """Documents with globally unique token ids, so a test can trace every token."""
    next_id = 1000
    for epoch in range(1, epochs + 1):
        docs = []
        for n in lengths:
            docs.append([bos] + list(range(next_id, next_id + n - 1)))
            next_id += n
        yield docs, epoch
    while True:
        yield [[bos, 1]], epochs + 1  # afterwards: a marker epoch


def take_rows(prep, lengths, T, n_rows):
    rows = prep.packed_rows(synthetic_batches(lengths), 0, T)
    return [next(rows) for _ in range(n_rows)]


def test_packing_fills_rows_exactly_without_cropping_when_documents_fit(monkeypatch, tmp_path):
    prep = load_prepare(monkeypatch, tmp_path)
    monkeypatch.setattr(prep, "DOC_BUFFER", 50)
    rows = take_rows(prep, [4, 6] * 40, T=9, n_rows=40)  # 6 + 4 fill a row of 10 exactly
    for row, epoch in rows:
        assert row[0] == 0 and epoch == 1
        assert list(row).count(0) == 2  # two whole documents per row, no crop
    tokens = sorted(int(t) for row, _ in rows for t in row if t != 0)
    assert tokens == sorted(set(tokens)) and len(tokens) == 40 * 8  # no token twice, none padded


def test_packing_crops_only_the_last_piece_of_a_row_and_loses_no_token(monkeypatch, tmp_path):
    prep = load_prepare(monkeypatch, tmp_path)
    monkeypatch.setattr(prep, "DOC_BUFFER", 20)
    lengths = [4, 7, 13, 2, 30, 5] * 50  # some longer than a row
    rows = [r for r, _ in take_rows(prep, lengths, T=11, n_rows=150)]
    seen = []
    for row in rows:
        assert row[0] == 0
        pieces = np.split(row, np.flatnonzero(row == 0)[1:])
        for piece in pieces[:-1]:  # all but the last piece of a row are whole (rests of) documents
            assert len(piece) >= 2
        seen += [int(t) for t in row if t != 0]
    assert len(seen) == len(set(seen))  # no token twice
    docs, start = [], 1000
    for n in lengths:
        docs.append(list(range(start, start + n - 1)))
        start += n
    position = {t: i for i, t in enumerate(seen)}
    finished = [d for d in docs if d[-1] in position]
    assert len(finished) > 100
    for d in finished:  # a document whose end was trained on was trained on whole, in order
        assert all(t in position for t in d)
        assert [position[t] for t in d] == sorted(position[t] for t in d)
    assert any(len(d) + 1 > 12 for d in finished)  # including ones longer than a row


def test_packing_prefers_the_largest_document_that_fits(monkeypatch, tmp_path):
    prep = load_prepare(monkeypatch, tmp_path)
    monkeypatch.setattr(prep, "DOC_BUFFER", 10)
    rows = take_rows(prep, [2, 5, 9, 3, 7] * 10, T=9, n_rows=1)
    row = list(rows[0][0])
    assert row[:9] == [0] + list(range(row[1], row[1] + 8))  # the whole 9-token document first
    assert row[9] == 0  # then a fresh document, cropped only because none is 1 token long


def test_epochs_are_not_mixed_in_the_buffer(monkeypatch, tmp_path):
    prep = load_prepare(monkeypatch, tmp_path)
    monkeypatch.setattr(prep, "DOC_BUFFER", 100)
    rows = prep.packed_rows(synthetic_batches([5] * 30, epochs=2), 0, 9)
    epochs = [next(rows)[1] for _ in range(30)]
    assert epochs == sorted(epochs) and epochs[0] == 1 and 2 in epochs


def test_dataloader_batches_shift_targets_and_start_rows_with_bos(smoke_cache, monkeypatch):
    prep = load_prepare(monkeypatch, smoke_cache)
    tok = prep.Tokenizer.from_directory()
    loader = prep.make_dataloader(tok, 4, 64, "train", device="cpu")
    for _ in range(3):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (4, 64) and x.dtype == torch.long and epoch >= 1
        assert (x[:, 0] == tok.get_bos_token_id()).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert x.is_contiguous() and y.is_contiguous()  # upstream's train.py calls targets.view(-1)
        assert int(x.max()) < tok.get_vocab_size()


# ---------------------------------------------------------------------------
# The metric

class Bigram(torch.nn.Module):
    """A model with the interface evaluate_bpb expects, and deterministic, non-trivial outputs. Given
    targets it returns a loss, as train.py's model does for training: a loss of its own choosing
    that the judge must never use."""

    def __init__(self, vocab):
        super().__init__()
        torch.manual_seed(0)
        self.logits = torch.nn.Parameter(torch.randn(vocab, vocab))

    def forward(self, x, y=None, reduction="mean"):
        if y is not None:
            return torch.zeros(y.shape if reduction == "none" else ())  # flattering, and wrong
        return self.logits[x]


class Jittery(Bigram):
    """Causal, but a few of its logits come out an ulp or so off from one call to the next, as bf16
    kernels that sum in a layout-dependent order do."""

    def forward(self, x, y=None, reduction="mean"):
        logits = self.logits[x].clone()
        flat = logits.view(-1)
        flat[torch.randint(0, flat.numel(), (flat.numel() // 1000,))] += 0.1 * flat.abs().max()
        return logits


class Peeking(Bigram):
    """Scores each position from the token after it as well: not causal."""

    def forward(self, x, y=None, reduction="mean"):
        ahead = torch.cat([x[:, 1:], x[:, -1:]], dim=1)
        return self.logits[x] + self.logits[ahead]


def test_evaluate_bpb_matches_an_independent_computation_for_any_batch_size(smoke_cache, monkeypatch):
    prep = load_prepare(monkeypatch, smoke_cache)
    tok = prep.Tokenizer.from_directory()
    model = Bigram(tok.get_vocab_size())
    rows = np.load(os.path.join(smoke_cache, "val_rows.npy")).astype(np.int64)
    assert rows.shape == (prep.EVAL_TOKENS // prep.MAX_SEQ_LEN, prep.MAX_SEQ_LEN + 1)
    nats = total_bytes = 0.0
    logp = torch.log_softmax(model.logits.detach().double(), dim=-1)
    specials = {tok.enc.encode_single_token(s) for s in prep.SPECIAL_TOKENS}
    for row in rows:
        for a, b in zip(row[:-1], row[1:]):
            if int(b) in specials:
                continue
            nats -= logp[a, b].item()
            total_bytes += len(tok.enc.decode_single_token_bytes(int(b)))
    expected = nats / math.log(2) / total_bytes
    for batch_size in (1, 7, 32, 128, 200):
        assert judged(prep, model, tok, batch_size) == pytest.approx(expected, rel=1e-6)


def test_a_uniform_model_scores_log2_vocab_per_token(smoke_cache, monkeypatch):
    prep = load_prepare(monkeypatch, smoke_cache)
    tok = prep.Tokenizer.from_directory()
    model = Bigram(tok.get_vocab_size())
    with torch.no_grad():
        model.logits.zero_()
    rows = np.load(os.path.join(smoke_cache, "val_rows.npy"))[:, 1:].astype(np.int64)
    counted = tok.token_bytes[rows]
    expected = (counted > 0).sum() * math.log2(tok.get_vocab_size()) / counted.sum()
    assert judged(prep, model, tok, 16) == pytest.approx(expected, rel=1e-6)  # fp32 losses


class Diverged(Bigram):
    """A run that diverged: its logits are NaN, which no arithmetic may turn into a score."""

    def forward(self, x, y=None, reduction="mean"):
        return torch.full((*x.shape, self.logits.size(1)), float("nan"))


def judge_model(cache, model):
    """evaluate_bpb on one of the models above, in a fresh Python, as train.py would call it."""
    code = ("import sys; sys.path.insert(0, 'tests'); import prepare, test_prepare as t; "
            "tok = prepare.Tokenizer.from_directory(); "
            f"{KEEP_BUDGET}print(prepare.evaluate_bpb(t.{model}(tok.get_vocab_size()), tok, 16))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, AUTORESEARCH_CACHE=cache),
                          capture_output=True, text=True)


def test_the_judge_fails_a_model_that_sees_later_tokens_in_one_line(smoke_cache):
    honest = judge_model(smoke_cache, "Bigram")
    assert honest.returncode == 0 and float(honest.stdout) > 1, honest.stderr
    jittery = judge_model(smoke_cache, "Jittery")
    assert jittery.returncode == 0, jittery.stderr  # rounding is not seeing the future
    assert_one_line_error(judge_model(smoke_cache, "Peeking"), "not causal")


def test_the_judge_refuses_a_val_bpb_that_is_not_a_number_in_one_line(smoke_cache):
    result = judge_model(smoke_cache, "Diverged")
    assert_one_line_error(result, "val_bpb is not a number")
    assert "nan" not in result.stdout  # no score printed for the agent to grep


def test_the_judge_scores_only_the_real_vocabulary_of_a_padded_model(smoke_cache, monkeypatch):
    prep = load_prepare(monkeypatch, smoke_cache)
    tok = prep.Tokenizer.from_directory()
    model, padded = Bigram(tok.get_vocab_size()), Bigram(tok.get_vocab_size() + 64)
    with torch.no_grad():
        padded.logits[:tok.get_vocab_size(), :tok.get_vocab_size()] = model.logits
    assert judged(prep, padded, tok, 32) == pytest.approx(judged(prep, model, tok, 32), rel=1e-6)


def test_train_py_commits_made_before_2026_11_30_still_find_their_hardware_helpers_in_prepare(smoke_cache):
    # `analysis.py --confirm` runs old commits against this judge; their train.py imports these from prepare
    code = ("from prepare import (default_device, device_name, bf16_is_native, tune_process, synchronize, "
            "load_flash_attention_3, peak_flops_of, peak_memory_mb)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, AUTORESEARCH_CACHE=smoke_cache),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
