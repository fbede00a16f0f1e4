"""Shared fixtures: tiny real-English corpora and prepared caches, all in temporary folders."""
import ast
import gzip
import http.server
import os
import subprocess
import sys
import threading
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests reach no hub: a GPU machine's prepare would fetch FA3
TRAIN = os.path.join(ROOT, "train.py")
HYPERPARAMETERS = "# Hyperparameters (edit these directly"  # train.py's section header after its definitions


CACHE_MODULES = ("prepare", "harness.cache", "harness.data", "harness.hardware")  # they read the cache's place


def load_prepare(monkeypatch, cache):
    """prepare.py and the harness modules it imports read the cache's location and setup at import:
    import them afresh for this cache. Returns prepare."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    monkeypatch.syspath_prepend(ROOT)
    for name in CACHE_MODULES:
        sys.modules.pop(name, None)
    import prepare
    return prepare


def load_harness(monkeypatch, cache, name):
    """harness/<name>.py afresh for this cache (with prepare.py, which imports it)."""
    load_prepare(monkeypatch, cache)
    return sys.modules[f"harness.{name}"]


def train_definitions(source=None, until=HYPERPARAMETERS):
    """train.py's code above the line `until` (by default its definitions: device section, model,
    optimizer), run as a module; `source` is an edited train.py's text."""
    source = source or open(TRAIN).read()
    assert until in source, f"train.py lost the section header the tests split at: {until!r}"
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # for its `from prepare import ...`
    module = types.ModuleType("train_definitions")
    module.__file__ = TRAIN
    exec(compile(source[:source.index(until)], TRAIN, "exec"), module.__dict__)
    return module


# Tests of the metric call evaluate_bpb as train.py would, after a budget the judge saw kept
# (one untimed step, nothing trained on the budget's time).
KEEP_BUDGET = "prepare.training_budget(prepare.torch.device('cpu')).over(); "


def judged(prep, model, tokenizer, batch_size):
    """prepare.evaluate_bpb, called after a budget kept (KEEP_BUDGET)."""
    prep.training_budget(prep.torch.device("cpu")).over()
    return prep.evaluate_bpb(model, tokenizer, batch_size)


def stdlib_documents():
    """Real English text that every Python install carries: the standard library's docstrings,
    one document per module, in a fixed order (read with ast: nothing is imported)."""
    lib = os.path.dirname(os.__file__)
    paths = sorted(os.path.relpath(os.path.join(d, f), lib) for d, _, fs in os.walk(lib) for f in fs
                   if f.endswith(".py") and not f.startswith("_"))
    for path in paths:
        if path.startswith(("site-packages", "test", "idlelib")) or "/test" in path:
            continue
        try:
            with open(os.path.join(lib, path), encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        text = "\n\n".join(d for d in (ast.get_docstring(n) for n in nodes) if d)
        if len(text) > 200:
            yield path[:-3].replace(os.sep, "."), text


def write_corpus(folder, max_chars):
    """A folder of .txt files of stdlib documentation, about max_chars in all."""
    os.makedirs(folder, exist_ok=True)
    total = 0
    for name, text in stdlib_documents():
        with open(os.path.join(folder, f"{name}.txt"), "w") as f:
            f.write(text)
        total += len(text)
        if total >= max_chars:
            break
    return folder


def run_prepare(cache, *args, check=True):
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *args],
                            env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"prepare.py failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("corpus")), 1_500_000)


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory, corpus):
    """A cache prepared with the smoke setup from the stdlib corpus (path as str)."""
    cache = tmp_path_factory.mktemp("smoke_cache")
    run_prepare(cache, "--data", corpus, "--setup", "smoke")
    return str(cache)


class ShardServer(http.server.ThreadingHTTPServer):
    """Serves {url path: bytes} on 127.0.0.1 from a thread of its own, and counts requests. Faults
    to inject per path: `failures` answers HTTP 503 that many times first; `truncate` sends half the
    file, claimed whole, that many times; `plan` lists (body, Content-Length) pairs the next
    responses send instead of the file. `compress` gzips for clients that accept it, as some
    mirrors do."""

    def __init__(self, files):
        self.files, self.failures, self.truncate, self.plan, self.hits = files, {}, {}, {}, {}
        self.compress = False
        super().__init__(("127.0.0.1", 0), ShardHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path):
        return self.endpoint + path


class ShardHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
        if self.path not in srv.files:
            self.send_error(404)
            return
        if srv.failures.get(self.path, 0) > 0:
            srv.failures[self.path] -= 1
            self.send_error(503)
            return
        planned = srv.plan.get(self.path)
        body, length = planned.pop(0) if planned else (srv.files[self.path], None)
        if srv.truncate.get(self.path, 0) > 0:
            srv.truncate[self.path] -= 1
            body = body[: len(body) // 2]  # a proxy that cuts the file and sends the cut part as whole
        self.send_response(200)
        if srv.compress and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped at the length it was told
            pass

    def log_message(self, *args):
        pass
