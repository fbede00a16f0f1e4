"""Where the data comes from: the published datasets' shards downloaded (in parallel, resumed,
retried, verified) and local corpora packed into the same layout, with pinned validation and test
documents. Not the judge's: once prepared the data is frozen in the cache (harness/cache.py), and
prepare.py alone decides what is evaluated; a mirror (HF_ENDPOINT) changes no result."""

import codecs
import errno
import json
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
import requests

from harness.cache import (CACHE_DIR, DATA_DIR, TEST_SHARD, atomic_path, has_data, scratch_dir)
from harness.errors import fail

# Hugging Face honours HF_ENDPOINT for mirrors; so do we (tests point it at a local server).
HF_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
DATASETS = {
    "fineweb-edu": dict(repo="karpathy/fineweb-edu-100b-shuffle", shards=1823),
    "climbmix": dict(repo="karpathy/climbmix-400b-shuffle", shards=6543),
    # One pre-shuffled file of 2.7M stories. Its authors keep rows 0-9,999 as test and suggest
    # 10,000-19,999 for validation; we test on rows 0-9,999 too, validate on rows 10,000-109,999
    # (enough tokens for any setup) and train on the rest.
    "tinystories": dict(repo="karpathy/tinystories-gpt4-clean", file="tinystories_gpt4_clean.parquet",
                        test_rows=(0, 10_000), val_rows=(10_000, 110_000)),
}

MIN_CHARS_PER_TOKEN = 100  # a corpus needs about this many characters per vocabulary entry
DOC_CHARS = 10_000         # --data: longer .txt/.md files are split into documents at paragraph breaks
SHARD_CHARS = 100_000_000  # --data: characters per packed shard
ROW_GROUP_SIZE = 1024      # documents per parquet row group, as in the published shards


# ---------------------------------------------------------------------------
# Shards

def verify_parquet(path):
    """True when the file is a complete parquet file with a readable, non-empty `text` column."""
    try:
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names or pf.metadata.num_rows == 0:
            return False
        for _ in pf.iter_batches(columns=["text"], batch_size=8192):
            pass  # decompress every page: a corrupt page raises here, not in the middle of a run
        return True
    except Exception:
        return False


def download_file(url, path, attempts=5, backoff=1.0):
    """Fetch url to path: streamed to a temporary file, verified, then renamed into place."""
    if os.path.exists(path) and verify_parquet(path):
        return
    name = os.path.basename(path)
    for attempt in range(1, attempts + 1):
        try:
            # identity: Content-Length then counts the bytes we receive, also from a mirror that compresses
            with atomic_path(path) as tmp, requests.get(url, stream=True, timeout=(10, 60),
                                                        headers={"Accept-Encoding": "identity"}) as r:
                r.raise_for_status()
                expected = int(r.headers.get("Content-Length", -1))
                received = 0
                with open(tmp, "wb") as f:
                    for chunk in r.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
                        received += len(chunk)
                if expected >= 0 and received != expected:
                    raise OSError(f"truncated: got {received} of {expected} bytes")
                if not verify_parquet(tmp):
                    raise OSError("not a valid parquet file with a text column")
            return
        except OSError as e:  # requests' errors are OSErrors too
            if getattr(e, "errno", None) == errno.ENOSPC:
                raise
            last = e
            if attempt < attempts:
                wait = backoff * 2 ** (attempt - 1)
                print(f"  {name}: attempt {attempt} failed ({short_reason(e)}); retrying in {wait:g}s", flush=True)
                time.sleep(wait)
    raise last


def short_reason(e):
    if isinstance(e, requests.ConnectionError):
        return "cannot connect"
    if isinstance(e, requests.Timeout):
        return "timed out"
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


def fetch_first(url, path):
    """The first download of a prepare: no network at all is said in one line, with the way out."""
    try:
        download_file(url, path, attempts=3)
    except requests.ConnectionError:
        fail(f"cannot reach {HF_ENDPOINT} (no network?); to prepare from local files "
                           f"instead run: uv run prepare.py --data PATH")


def hf_url(repo, filename):
    return f"{HF_ENDPOINT}/datasets/{repo}/resolve/main/{filename}"


def download_shards(dataset, num_shards, workers):
    """Download num_shards training shards, the pinned validation shard (the dataset's last) and
    the test shard (the one before it), which training never reads."""
    info = DATASETS[dataset]
    if not 1 <= num_shards < info["shards"] - 1:
        fail(f"--num-shards must be between 1 and {info['shards'] - 2} for {dataset}")
    names = [f"shard_{i:05d}.parquet" for i in [info["shards"] - 1, info["shards"] - 2, *range(num_shards)]]
    paths = [os.path.join(DATA_DIR, n) for n in names]
    paths[1] = TEST_SHARD
    with ThreadPoolExecutor(max_workers=workers) as pool:
        present = list(pool.map(verify_parquet, paths))
    todo = [(hf_url(info["repo"], n), p) for n, p, ok in zip(names, paths, present) if not ok]
    print(f"data: {len(names) - len(todo)} of {len(names)} shards of {info['repo']} present, downloading {len(todo)}")
    if not todo:
        return
    fetch_first(*todo[0])  # alone: without a network this is the only failure the user sees
    t0, done, failed = time.time(), 1, []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(pool.submit(download_file, url, path), path) for url, path in todo[1:]]
        for future, path in futures:
            try:
                future.result()
                done += 1
                print(f"  downloaded {done}/{len(todo)} ({time.time() - t0:.0f}s)", flush=True)
            except OSError as e:
                if getattr(e, "errno", None) == errno.ENOSPC:
                    raise
                failed.append(f"{os.path.basename(path)}: {short_reason(e)}")
    if failed:
        fail(f"{len(failed)} of {len(todo)} shards failed to download ({failed[0]}); "
                           f"run `uv run prepare.py` again to fetch the rest")


def write_shard(path, texts):
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({"text": texts}), tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd")


def publish_shards(train_groups, val_docs, test_docs):
    """Write training shards, the validation shard (named last) and the test shard to a staging
    folder, then move it into place at once: an interrupted run leaves no partial data folder."""
    with scratch_dir(DATA_DIR + ".tmp") as staging:
        n = 0
        for n, docs in enumerate(train_groups, 1):
            write_shard(os.path.join(staging, f"shard_{n - 1:05d}.parquet"), docs)
        write_shard(os.path.join(staging, f"shard_{n:05d}.parquet"), val_docs)
        write_shard(os.path.join(staging, os.path.basename(TEST_SHARD)), test_docs)
        os.replace(staging, DATA_DIR)
    return n


def tinystories_texts():
    info = DATASETS["tinystories"]
    raw = os.path.join(CACHE_DIR, info["file"])
    fetch_first(hf_url(info["repo"], info["file"]), raw)
    return pq.read_table(raw, columns=["text"]).column("text").to_pylist()


def repack_tinystories():
    """TinyStories is one file: split it into the shard layout, validation rows pinned last."""
    texts, (lo, hi), (test_lo, test_hi) = tinystories_texts(), *(DATASETS["tinystories"][k] for k in ("val_rows", "test_rows"))
    train, per_shard = texts[hi:], 250_000
    publish_shards((train[i:i + per_shard] for i in range(0, len(train), per_shard)), texts[lo:hi],
                   texts[test_lo:test_hi])


# ---------------------------------------------------------------------------
# Local data (--data PATH)

LOCAL_SUFFIXES = (".parquet", ".txt", ".md", ".jsonl")


def local_files(path):
    if not os.path.exists(path):
        fail(f"--data {path}: no such file or folder")
    if os.path.isfile(path):
        files = [path]
    else:
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    files = [f for f in files if f.lower().endswith(LOCAL_SUFFIXES)]
    if not files:
        fail(f"--data {path}: no .parquet, .txt, .md or .jsonl files in it")
    return files


def read_lines(path):
    """Lines of a text file as str (a huge line in pieces); invalid UTF-8 is replaced (and counted)
    rather than fatal."""
    bad = 0
    decoder = codecs.getincrementaldecoder("utf-8")()  # a piece may end inside a character
    with open(path, "rb") as f:
        for raw in iter(lambda: f.readline(1 << 20), b""):  # bounded: a file may be one huge line
            try:
                yield decoder.decode(raw)
            except UnicodeDecodeError:
                bad += 1
                decoder.reset()
                yield raw.decode("utf-8", errors="replace")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:  # the file ends inside a character
        bad += 1
    if bad:
        print(f"  warning: {path}: {bad} lines were not valid UTF-8; bad bytes replaced with U+FFFD")


def text_documents(path):
    """A .txt/.md file is one document, or several cut at paragraph breaks when it is long (and a
    paragraph too long for one document at a space)."""
    doc, size = [], 0
    for line in read_lines(path):
        while size + len(line) > 4 * DOC_CHARS:
            room = 4 * DOC_CHARS - size
            cut = line.rfind(" ", room // 2, room) + 1 or room
            yield "".join(doc) + line[:cut]
            doc, size, line = [], 0, line[cut:]
        doc.append(line)
        size += len(line)
        if size >= DOC_CHARS and (not line.strip() or size >= 4 * DOC_CHARS):
            yield "".join(doc)
            doc, size = [], 0
    if doc:
        yield "".join(doc)


def jsonl_documents(path):
    skipped = 0
    for i, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
            if not isinstance(text, str):
                raise TypeError
            yield text
        except (ValueError, KeyError, TypeError):
            skipped += 1
    if skipped:
        print(f"  warning: {path}: skipped {skipped} lines without a string \"text\" field")


def parquet_documents(path):
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        fail(f"--data: {path} is not a readable parquet file ({short_reason(e)})")
    if "text" not in pf.schema_arrow.names:
        fail(f"--data: {path} has no `text` column (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=["text"], batch_size=ROW_GROUP_SIZE):
        yield from (t for t in batch.column("text").to_pylist() if t)


def local_documents(files):
    for path in files:
        suffix = os.path.splitext(path)[1].lower()
        reader = {".parquet": parquet_documents, ".jsonl": jsonl_documents}.get(suffix, text_documents)
        try:
            yield from (doc for doc in reader(path) if doc.strip())
        except OSError as e:
            fail(f"--data: cannot read {path} ({e.strerror or e})")


def pack_local_corpus(path, setup, constants):
    """Pack a local corpus into shuffled shards plus a validation shard spread evenly over it."""
    files = local_files(path)
    print(f"data: packing {len(files)} file{'s' * (len(files) != 1)} from {path}")
    n_docs = total_chars = 0
    for doc in local_documents(files):
        n_docs += 1
        total_chars += len(doc)
    needed = MIN_CHARS_PER_TOKEN * constants["VOCAB_SIZE"]
    if total_chars < needed:
        fail(f"--data {path} holds {total_chars:,} characters of text; the {setup} setup's "
                           f"{constants['VOCAB_SIZE']}-token vocabulary needs at least {needed:,}")
    # Validation: enough text for the setup's evaluation tokens (about 4 characters a token, doubled
    # for what packing crops), at most a tenth of the corpus; evaluation repeats it if it is short.
    val_fraction = min(0.1, 8 * constants["EVAL_TOKENS"] / total_chars)
    if n_docs < 3:
        fail(f"--data {path} holds {n_docs} document(s); training, validation and test need "
                           f"one each at least: split it into several files or .jsonl records")
    n_val = max(1, round(n_docs * val_fraction))  # at least one, however few and long the documents
    n_train_shards = max(1, math.ceil(total_chars * (1 - val_fraction) / SHARD_CHARS))
    # Two-level shuffle with bounded memory: documents go to random buckets on disk, then each
    # bucket is shuffled in memory and becomes a shard.
    rng, val, test = random.Random(0), [], []

    def shuffled_buckets(bucket_paths):
        for path in bucket_paths:
            with open(path) as f:
                docs = [json.loads(line) for line in f]
            rng.shuffle(docs)  # a folder is usually ordered by topic; training wants a shuffled stream
            yield docs
            os.remove(path)

    with scratch_dir(os.path.join(CACHE_DIR, "buckets.tmp")) as bucket_dir:
        bucket_paths = [os.path.join(bucket_dir, f"{i}.jsonl") for i in range(n_train_shards)]
        buckets = [open(p, "w") for p in bucket_paths]
        try:
            for i, doc in enumerate(local_documents(files)):
                # the last of every n_docs / n_val documents is for validation and the one before it
                # for test: both spread evenly over the corpus, and of about the same size
                if (i + 1) * n_val // n_docs > i * n_val // n_docs:
                    val.append(doc)
                elif (i + 2) * n_val // n_docs > (i + 1) * n_val // n_docs:
                    test.append(doc)
                else:
                    buckets[rng.randrange(n_train_shards)].write(json.dumps(doc) + "\n")
        finally:
            for b in buckets:
                b.close()
        publish_shards(shuffled_buckets(bucket_paths), val, test)
    print(f"  {n_docs:,} documents, {total_chars / 1e6:.1f}M characters: "
          f"{n_train_shards} training shard(s), {len(val):,} documents pinned for validation and {len(test):,} for test")


def get_data(source, setup, constants, num_shards, workers):
    """Download or pack the shards. True when they were made anew, which makes whatever was derived
    from earlier ones stale (a downloaded shard never changes: fetching a missing one is not that)."""
    if "shards" in DATASETS.get(source, {}):
        os.makedirs(DATA_DIR, exist_ok=True)
        download_shards(source, num_shards, workers)
        return False
    if has_data():
        print(f"data: already in {DATA_DIR}")
        # Compatibility: a TinyStories cache packed before test splits existed gets its test shard.
        # Remove once no such cache is in use.
        if source == "tinystories" and not os.path.exists(TEST_SHARD):
            lo, hi = DATASETS["tinystories"]["test_rows"]
            write_shard(TEST_SHARD, tinystories_texts()[lo:hi])
        return False
    if source == "tinystories":
        repack_tinystories()
    else:
        pack_local_corpus(source, setup, constants)
    return True
