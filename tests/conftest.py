"""Shared fixtures: tiny real-English corpora and prepared caches, all in temporary folders."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
