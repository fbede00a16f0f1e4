"""The ratchet, end to end: play the agent by running the commands program.md gives, literally.

A throwaway git repository is built from the project's files, against a prepared `smoke` cache.
The commands are read out of program.md's ```bash blocks by their bold labels, so this test breaks
when the manual and reality drift apart. Only the <placeholders> are filled in.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

PROJECT_FILES = ["prepare.py", "train.py", "program.md", "analysis.py", "README.md", "pyproject.toml",
                 "uv.lock", ".python-version", ".gitignore"]

# The 5-second smoke run is noisy, so the repository starts from a handicapped train.py (learning
# rates cut tenfold): undoing the handicap is then an edit that is reliably better, and zeroing
# them one that is reliably worse.
LEARNING_RATES = {"EMBEDDING_LR": 0.6, "UNEMBEDDING_LR": 0.004, "MATRIX_LR": 0.04, "SCALAR_LR": 0.5}


def program_blocks():
    """{bold label: bash block} from program.md: each block under the last bold label before it."""
    text = open(os.path.join(ROOT, "program.md")).read()
    blocks, label = {}, None
    for part in re.split(r"(```bash\n.*?```)", text, flags=re.S):
        if part.startswith("```bash"):
            if label:
                blocks.setdefault(label, part[len("```bash\n"):-3].strip())
            label = None
        else:
            bold = re.findall(r"\*\*([^*]+?)\*\*", part)
            label = bold[-1].rstrip(":.").strip() if bold else label
    return blocks


def set_learning_rates(path, scale):
    source = open(path).read()
    for name, value in LEARNING_RATES.items():
        source, n = re.subn(rf"^{name} = [^ ]+", f"{name} = {value * scale!r}", source, flags=re.M)
        assert n == 1, f"train.py has no line `{name} = ...`"
    open(path, "w").write(source)


@pytest.fixture
def agent(tmp_path, smoke_cache):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in PROJECT_FILES:
        shutil.copy(os.path.join(ROOT, name), repo / name)
    set_learning_rates(repo / "train.py", 0.1)
    env = dict(os.environ, AUTORESEARCH_CACHE=smoke_cache,
               # `uv run` in the copy uses the project's environment (same lock file): no new install
               UV_PROJECT_ENVIRONMENT=os.path.join(ROOT, ".venv"), UV_OFFLINE="1",
               GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_SYSTEM=os.devnull)
    subprocess.run("git init -q -b main && git add -A && git -c user.name=t -c user.email=t@t commit -qm initial",
                   shell=True, cwd=repo, check=True, env=env)
    blocks = program_blocks()

    def run(label, **placeholders):
        command = blocks[label]
        for key, value in placeholders.items():
            command = command.replace(f"<{key}>", value)
        assert "<" not in re.sub(r"<<|< ?/|2>&1|>", "", command.replace("<(", "")), f"unfilled placeholder in: {command}"
        result = subprocess.run(command, shell=True, executable="/bin/bash", cwd=repo, env=env,
                                capture_output=True, text=True, timeout=900)
        return result

    run.repo = repo
    run.blocks = blocks
    return run


def results(repo):
    lines = (repo / "results.tsv").read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_program_md_names_every_command_the_loop_needs():
    blocks = program_blocks()
    for label in ["Create the branch", "Check the data exists", "Make sure git can commit", "Start the log",
                  "Run", "Read the result", "Read the traceback", "Log", "Baseline", "Baseline repeat",
                  "Commit", "Check the judge", "Keep", "Discard"]:
        assert label in blocks, f"program.md has no ```bash block labelled **{label}**"


def test_following_program_md_keeps_only_improvements(agent):
    repo = agent.repo
    # Setup
    assert agent("Create the branch", tag="e2e").returncode == 0
    ready = agent("Check the data exists")
    assert ready.returncode == 0 and "data ready, setup smoke" in ready.stdout, ready.stderr
    assert agent("Make sure git can commit").returncode == 0
    assert agent("Start the log").returncode == 0
    initial = git(repo, "rev-parse", "HEAD").strip()

    # The baseline, twice
    baseline = agent("Baseline")
    assert baseline.returncode == 0, baseline.stderr + (repo / "run.log").read_text()[-3000:]
    assert re.match(r"val_bpb:\s+\d+\.\d{6}\npeak_vram_mb:\s+\d+\.\d", baseline.stdout)
    assert agent("Baseline repeat").returncode == 0

    def experiment(edit, description):
        edit(repo / "train.py")
        assert agent("Commit", description=description).returncode == 0
        assert agent("Check the judge").returncode == 0
        agent("Run")
        return agent("Read the result").stdout

    def decide_and_log(result, description):
        _, rows = results(repo)
        best = min(float(r[1]) for r in rows if r[3] == "keep")
        if not result:
            status = "crash"
        else:
            status = "keep" if float(result.split()[1]) < best else "discard"
        assert agent("Log", status=status, description=description).returncode == 0
        agent("Keep" if status == "keep" else "Discard")
        return status

    # 1. a syntax error: crash, the traceback at the end of run.log, reset, the log intact
    def break_syntax(path):
        path.write_text(path.read_text() + "\ndef broken(:\n")
    result = experiment(break_syntax, "syntax error")
    assert result == ""
    assert "SyntaxError" in agent("Read the traceback").stdout
    assert decide_and_log(result, "syntax error") == "crash"

    # 2. learning rates zeroed: worse, discarded, train.py back to the kept version
    kept_source = git(repo, "show", "HEAD:train.py")
    result = experiment(lambda p: set_learning_rates(p, 0.0), "zero learning rates")
    assert decide_and_log(result, "zero learning rates") == "discard"
    assert (repo / "train.py").read_text() == kept_source

    # 3. the handicap undone: better, kept, the branch advanced
    result = experiment(lambda p: set_learning_rates(p, 1.0), "full learning rates")
    assert decide_and_log(result, "full learning rates") == "keep"

    header, rows = results(repo)
    assert header == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert [r[3] for r in rows] == ["keep", "discard", "crash", "discard", "keep"]
    assert [r[4] for r in rows] == ["baseline", "baseline repeat (noise check)", "syntax error",
                                    "zero learning rates", "full learning rates"]
    for commit, val_bpb, memory_gb, status, _ in rows:
        assert re.fullmatch(r"[0-9a-f]{7}", commit)
        assert re.fullmatch(r"\d+\.\d{6}", val_bpb) and re.fullmatch(r"\d+\.\d", memory_gb)
        assert (float(val_bpb) == 0) == (status == "crash")
    assert float(rows[3][1]) > float(rows[0][1]) > float(rows[4][1])

    # results.tsv is untracked, ignored and survived both resets; git holds exactly the kept commits
    assert git(repo, "ls-files", "results.tsv", "run.log") == ""
    assert "results.tsv" in git(repo, "status", "--porcelain", "--ignored")
    log = git(repo, "log", "--format=%s").splitlines()
    assert log == ["full learning rates", "initial"]
    assert git(repo, "rev-parse", "HEAD~1").strip() == initial
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "autoresearch/e2e"
    assert rows[4][0] == git(repo, "rev-parse", "--short=7", "HEAD").strip()

    # the morning review
    review = subprocess.run([sys.executable, "analysis.py", "results.tsv", "--json"], cwd=repo,
                            capture_output=True, text=True)
    assert review.returncode == 0, review.stderr
    summary = json.loads(review.stdout)
    assert summary["counts"] == {"keep": 2, "discard": 2, "crash": 1}
    assert (repo / "progress.png").exists()
