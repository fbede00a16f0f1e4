"""The ratchet, end to end: play the agent by running the commands program.md gives, literally.

A throwaway git repository is built from the project's files, against a prepared `smoke` cache.
The commands are read out of program.md's ```bash blocks by their bold labels, so this test breaks
when the manual and reality drift apart. Only the <placeholders> are filled in.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
import analysis  # noqa: E402

PROJECT_FILES = ["prepare.py", "train.py", "program.md", "analysis.py", "README.md", "pyproject.toml",
                 "uv.lock", ".python-version", ".gitignore"]
PROJECT_FOLDERS = ["harness"]

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



def make_agent(repo, cache, extra_env=None):
    """Play the agent in `repo`: agent(label, **placeholders) runs program.md's block literally."""
    env = dict(os.environ, AUTORESEARCH_CACHE=cache,
               # `uv run` in the copy uses the project's environment (same lock file): no new install
               UV_PROJECT_ENVIRONMENT=os.path.join(ROOT, ".venv"), UV_OFFLINE="1",
               GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_SYSTEM=os.devnull, **(extra_env or {}))
    env.pop("CUDA_VISIBLE_DEVICES", None) if not extra_env else None
    blocks = program_blocks()

    def command(label, **placeholders):
        text = blocks[label]
        for key, value in placeholders.items():
            text = text.replace(f"<{key}>", value)
        assert not re.search(r"<[a-z]+>", text), f"unfilled placeholder in: {text}"
        return text

    def run(label, background=False, **placeholders):
        text = command(label, **placeholders)
        if background:
            return subprocess.Popen(text, shell=True, executable="/bin/bash", cwd=repo, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        return subprocess.run(text, shell=True, executable="/bin/bash", cwd=repo, env=env,
                              capture_output=True, text=True, timeout=900)

    run.repo, run.blocks, run.env, run.command = repo, blocks, env, command
    return run


def make_repo(path, env_cache, handicap=0.1):
    path.mkdir()
    for name in PROJECT_FILES:
        shutil.copy(os.path.join(ROOT, name), path / name)
    for name in PROJECT_FOLDERS:
        shutil.copytree(os.path.join(ROOT, name), path / name, ignore=shutil.ignore_patterns("__pycache__"))
    set_learning_rates(path / "train.py", handicap)
    subprocess.run("git init -q -b main && git add -A && git -c user.name=t -c user.email=t@t commit -qm initial",
                   shell=True, cwd=path, check=True, env=dict(os.environ, GIT_CONFIG_GLOBAL=os.devnull))
    return make_agent(path, env_cache)


@pytest.fixture
def agent(tmp_path, smoke_cache):
    return make_repo(tmp_path / "repo", smoke_cache)


@pytest.fixture
def fake_agent(tmp_path):
    """A repository whose runs are fake run.log files: for the rule, not for training."""
    return make_repo(tmp_path / "repo", str(tmp_path / "no-cache"))


BACKGROUND = "**Run in the background**: the same line with `nohup ` before it and ` &` after it"


def run_in_background(agent):
    """program.md's Run in the background: the Run line with `nohup ` before it and ` &` after it."""
    subprocess.run("nohup " + agent.command("Run") + " &", shell=True, executable="/bin/bash", cwd=agent.repo,
                   env=agent.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def results(repo):
    lines = (repo / "results.tsv").read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def decision(out):
    found = re.findall(r"^decision: (\w+)$", out.stdout, re.M)
    assert len(found) <= 1, out.stdout
    return found[0] if found else None


def field(out, name):
    return float(re.search(rf"^{name}:\s+([-+0-9.]+)", out.stdout, re.M).group(1))


SUMMARY = ("---\nval_bpb:          {v:.6f}\ntraining_seconds: 5.1\ntotal_seconds:    30.2\n"
           "peak_vram_mb:     1024.0\nmfu_percent:      {mfu:.2f}\ntotal_tokens_M:   0.1\n"
           "num_steps:        {steps}\nnum_params_M:     0.6\ndepth:            2\n")


def fake_run(repo, v=None, steps=100, mfu=40.0, tail="", end=0, incumbent=None, running=False, trained=(5.1, 5.2),
             stopped=None):
    """A run as Run records it, without training: its record (the runner's, the clock's and, when
    `v` is given, the judge's val_bpb) and its run.log (status lines, then a summary or not, then
    the end); with `incumbent`, a run of that commit beside the candidate, as Run makes one when the
    keep rule asks for it; `running`: one still going (no end yet, in the record or in run.log);
    `trained`: the clock's budget and wall seconds; `stopped`: how Run killed it."""
    from harness import runrecord
    run_id = f"fake-{time.time_ns()}"  # two real runs never share a record
    folder = os.path.join(git(repo, "rev-parse", "--absolute-git-dir").strip(), "autoresearch-runs", run_id)
    os.makedirs(folder)
    commit = incumbent or git(repo, "rev-parse", "HEAD").strip()
    now, clock = time.time(), {"budget_seconds": trained[0], "wall_seconds": trained[1]}
    ending = {} if running else {"ended": now, "exit": end, "wall_seconds": 30.0, **({"stopped": stopped} if stopped else {})}
    runrecord.note("run", {"id": run_id, "commit": commit, "role": "incumbent" if incumbent else "candidate",
                           "setup": "smoke", "started": now - 30, **ending}, folder)
    runrecord.note("clock", clock, folder)
    if v is not None:
        runrecord.note("judge", {"val_bpb": v, "tokens": 4096, "setup": "smoke", "clock": clock,
                                 "peak_memory_mb": 1024.0}, folder)  # no device: the pace rules of a GPU apply
    status = "".join(f"\rstep {i:05d} ({i}%) | loss: 5.0 | lrm: 1.00" for i in range(steps))
    body = status + "\n" + (SUMMARY.format(v=v, steps=steps, mfu=mfu) if v is not None else "") + tail
    body += f"\n{stopped}" if stopped else ""
    head = f"commit: {commit[:7]}\nrun: {run_id}\n" + ("role: incumbent\n" if incumbent else "")
    (repo / "run.log").write_text(head + body + ("" if running else f"\nrun ended: exit {end}\n"))


def settle(agent, candidate, incumbent, steps=100):
    """Play an experiment's runs with fake run.logs until the keep rule decides: the candidate's
    value each time Decide asks for the candidate, the incumbent's each time it asks for the
    incumbent (Run would train it in a temporary worktree). Returns Decide's last output."""
    kept = [r[0] for r in results(agent.repo)[1] if r[3] == "keep"][-1]
    fake_run(agent.repo, candidate, steps=steps)
    for _ in range(12):
        out = agent("Decide")
        if decision(out) != "rerun":
            return out
        beside = "trains the incumbent" in out.stdout
        fake_run(agent.repo, incumbent if beside else candidate, steps=steps, incumbent=kept if beside else None)
    raise AssertionError(f"no decision after 12 runs:\n{out.stdout}")


def test_program_md_names_every_command_the_loop_needs():
    blocks = program_blocks()
    for label in ["Create the branch", "Check the data exists", "Make sure git can commit", "Start the log",
                  "Keep the machine awake", "Run", "Poll", "Read the traceback",
                  "Decide", "Log", "Board", "Adopt", "Commit", "Discard", "Amend", "Where am I"]:
        assert label in blocks, f"program.md has no ```bash block labelled **{label}**"
    # each command once: the runner only in Run; its background form is the same line, said in words
    text = open(os.path.join(ROOT, "program.md")).read()
    assert "perl" not in text and text.count("analysis.py --run") == 1 and text.count("--decide") == 2
    assert BACKGROUND in " ".join(text.split())
    assert "5-minute" not in text and "70 experiments" not in text
    assert len(text.split()) < 1750  # 1,679 before the board and Adopt


def test_following_program_md_keeps_only_improvements(agent):
    repo = agent.repo
    # Setup
    assert agent("Create the branch", tag="e2e").returncode == 0
    ready = agent("Check the data exists")
    assert ready.returncode == 0, ready.stderr
    assert "data ready, setup smoke: 5 s of training" in ready.stdout and "install check" in ready.stdout
    assert "GPU pin: CUDA_VISIBLE_DEVICES=none" in ready.stdout
    assert agent("Make sure git can commit").returncode == 0
    assert agent("Start the log").returncode == 0
    assert agent("Keep the machine awake").returncode == 0
    initial = git(repo, "rev-parse", "--short=7", "HEAD").strip()

    # Fresh log, no run yet: Decide says to run
    first = agent("Decide")
    assert first.returncode == 1 and decision(first) is None and "Run first" in first.stdout

    # The baseline crashed (out of memory, as `full` on a small GPU): logged as crash whatever was typed,
    # and it never becomes the bar
    fake_run(repo, tail="Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory\n"
                        "Out of memory at DEVICE_BATCH_SIZE = 128: a crash\n", end=1)
    out = agent("Decide")
    assert decision(out) == "crash" and "the baseline crashed" in out.stdout and "DEVICE_BATCH_SIZE" in out.stdout
    assert agent("Log", status="keep", description="baseline").returncode == 0
    assert results(repo)[1][-1] == [initial, "0.000000", "0.0", "crash", "baseline"]

    # The baseline, twice (three times if a busy machine made the two disagree in steps): Run, Decide, Log
    for n, description in ((1, "baseline"), (2, "baseline run 2"), (3, "baseline run 3")):
        for _ in range(3):  # a run a busy machine spoiled is run again, as program.md says
            ran = agent("Run")
            assert ran.returncode == 0, (repo / "run.log").read_text()[-3000:]
            assert re.search(r"^run ended: exit 0$", (repo / "run.log").read_text(), re.M)
            assert (repo / "run.log").read_text().startswith(f"commit: {initial}\n")  # run.log names its commit
            assert analysis.read_run(str(repo / "run.log"))["trained"] is not None  # the status line's wall time
            out = agent("Decide")
            if decision(out) != "rerun":
                break
        assert decision(out) == "keep" and (f"run {n} of 2" in out.stdout or n > 1), out.stdout
        assert f"(ran commit {initial})" in out.stdout
        assert agent("Log", status="keep", description=description).returncode == 0
        if "a third run" not in out.stdout and n > 1:
            break
    _, rows = results(repo)
    runs = [float(r[1]) for r in rows[1:]]
    assert agent("Log", status="keep", description="again").returncode == 1  # already logged

    def experiment(edit, description):
        edit(repo / "train.py")
        assert agent("Commit", description=description).returncode == 0
        assert agent("Run").returncode in (0, 1)
        return agent("Decide")

    # 1. a syntax error, described with backticks, $ and an apostrophe: crash, a bounded traceback
    description = "break `train.py` on purpose: it's $HOME's \"fault\""
    out = experiment(lambda p: p.write_text(p.read_text() + "\ndef broken(:\n"), description)
    assert decision(out) == "crash"
    assert git(repo, "log", "-1", "--format=%s").strip() == description
    traceback = agent("Read the traceback").stdout
    assert "SyntaxError" in traceback.strip().splitlines()[-1] and len(traceback) < 12_000
    assert agent("Log", status="crash", description=description).returncode == 0
    assert results(repo)[1][-1][3:] == ["crash", description]
    assert agent("Discard").returncode == 0
    assert git(repo, "rev-parse", "--short=7", "HEAD").strip() == initial

    # 2. the handicap undone: better (re-run if within the noise), kept, the branch advanced
    beside = 0
    for attempt in range(2):  # a machine busy enough to keep changing speed gives no verdict: once more
        out = experiment(lambda p: set_learning_rates(p, 1.0), "full learning rates")
        for _ in range(10):  # the keep rule's runs: the incumbent's beside the candidate's, as Decide asks
            if decision(out) != "rerun":
                break
            beside += "trains the incumbent" in out.stdout
            assert agent("Run").returncode == 0
            out = agent("Decide")
        if decision(out) == "keep" or "no verdict" not in out.stdout or attempt:
            break
        assert agent("Discard").returncode == 0  # unlogged: the same idea is tried again, as a new commit
    assert decision(out) == "keep", out.stdout
    assert beside >= 1  # the incumbent ran again, in a temporary worktree, beside the candidate
    assert git(repo, "worktree", "list").count("\n") == 1  # ...which is gone
    assert agent("Log", status="keep", description="full learning rates").returncode == 0
    kept = git(repo, "rev-parse", "--short=7", "HEAD").strip()

    # 3. a commit that failed (nothing to commit): Discard stays on the last kept commit, never HEAD~1
    assert agent("Commit", description="no change").returncode != 0
    assert agent("Discard").returncode == 0
    assert git(repo, "rev-parse", "--short=7", "HEAD").strip() == kept

    # 4. a committed change to the judge: Run refuses, and says how to restore it; Decide and Log agree
    (repo / "prepare.py").write_text((repo / "prepare.py").read_text().replace("TIME_BUDGET=5,", "TIME_BUDGET=50,"))
    set_learning_rates(repo / "train.py", 0.9)
    subprocess.run("git add prepare.py train.py && git commit -qm 'sneaky'", shell=True, cwd=repo,
                   check=True, env=agent.env)
    assert agent("Run").returncode == 2
    refused = (repo / "run.log").read_text()
    assert "the judge was modified" in refused and refused.rstrip().endswith("run ended: exit 2")
    out = agent("Decide")
    assert decision(out) is None and "Run did not start train.py" in out.stdout
    assert agent("Log", status="crash", description="sneaky").returncode == 1  # nothing to log
    restore = re.search(r"run (git checkout \S+ -- [^,]+), then Amend", refused).group(1)
    subprocess.run(restore, shell=True, cwd=repo, check=True)
    assert agent("Amend").returncode == 0
    assert agent("Discard").returncode == 0

    # 5. a run that outlives the kill (here 2 s instead of 540): TIMEOUT, a crash. The Run command's
    # own watchdog, called with a shorter limit
    timed = subprocess.run([sys.executable, "-c", "import sys; from harness.run import run; sys.exit(run(timeout=2))"],
                           cwd=repo, env=agent.env, stdout=open(repo / "run.log", "w"), stderr=subprocess.STDOUT,
                           timeout=120)
    assert timed.returncode == 137
    log = (repo / "run.log").read_text()
    assert "TIMEOUT: killed after 2 s" in log and "run ended: exit 137" in log
    out = agent("Decide")
    assert decision(out) == "crash" and "TIMEOUT" in out.stdout

    # 6. a run cut off by the shell tool's own limit: KILLED, re-run unlogged
    (repo / "run.log").unlink()  # the last run's
    proc = subprocess.Popen(agent.command("Run"), shell=True, executable="/bin/bash", cwd=repo, env=agent.env,
                            start_new_session=True)
    deadline = time.time() + 120  # until train.py speaks: the runner has its signal handlers by then
    while time.time() < deadline and (not (repo / "run.log").exists()
                                      or "Device:" not in (repo / "run.log").read_text()):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)  # bash may die before the runner has written its line: give it a moment
    deadline = time.time() + 20
    while time.time() < deadline and "KILLED: by SIGTERM" not in (repo / "run.log").read_text():
        time.sleep(0.2)
    assert "KILLED: by SIGTERM" in (repo / "run.log").read_text()
    out = agent("Decide")
    assert decision(out) == "rerun" and "don't log it" in out.stdout

    # 7. the background form returns at once; Poll reports the end
    started = time.time()
    run_in_background(agent)
    assert time.time() - started < 10
    polled = agent("Poll")
    assert polled.returncode == 0
    while "run ended" not in polled.stdout:
        polled = agent("Poll")
    assert polled.stdout.strip().startswith("run ended: exit")

    # results.tsv is untracked and survived every reset; git holds exactly the kept commits
    header, rows = results(repo)
    assert header == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    n_base = len(runs)  # the baseline's runs: 2, or 3 when the first two disagreed in steps
    assert [r[3] for r in rows] == ["crash"] + ["keep"] * n_base + ["crash", "keep"]
    for commit, val_bpb, memory_gb, status, _ in rows:
        assert re.fullmatch(r"[0-9a-f]{7}", commit)
        assert re.fullmatch(r"\d+\.\d{6}", val_bpb) and re.fullmatch(r"\d+\.\d", memory_gb)
        assert (float(val_bpb) == 0) == (status == "crash")
    assert git(repo, "ls-files", "results.tsv", "run.log") == ""
    assert git(repo, "log", "--format=%s").splitlines() == ["full learning rates", "initial"]
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "autoresearch/e2e"

    # ...and the git record holds every logged run with its result, the crashed commit's code too,
    # after Discard and gc
    subprocess.run(["git", "gc", "-q", "--prune=now"], cwd=repo, check=True)
    entries = [json.loads(line) for line in git(repo, "show", "autoresearch-log/e2e:log.jsonl").splitlines()]
    assert [(e["commit"][:7], e["status"], e["val_bpb"]) for e in entries] == [
        (r[0], r[3], float(r[1])) for r in rows]
    assert {e["setup"] for e in entries if e["status"] == "keep"} == {"smoke"}  # from run.log's summary
    assert "def broken(:" in git(repo, "show", f"{entries[1 + n_base]['commit']}:train.py")

    # Resume: where am I, in one command
    where = agent("Where am I")
    assert "autoresearch/e2e" in where.stdout and "next:" in where.stdout
    assert f"ran commit {kept}" in where.stdout  # the background run ran the last kept commit

    # the morning review
    review = subprocess.run([sys.executable, "analysis.py", "results.tsv", "--json"], cwd=repo,
                            capture_output=True, text=True)
    assert review.returncode == 0, review.stderr
    assert json.loads(review.stdout)["counts"] == {"keep": n_base + 1, "discard": 0, "crash": 2}
    assert (repo / "progress.png").exists()


def test_decide_and_log_follow_the_rule(fake_agent):
    agent, repo = fake_agent, fake_agent.repo
    for label in ("Create the branch", "Make sure git can commit", "Start the log"):
        assert agent(label, tag="rule").returncode == 0

    def decide(v, **kw):
        fake_run(repo, v, **kw)
        out = agent("Decide")
        assert out.returncode in (0, 1), out.stderr
        return out

    def log(status, description="x"):
        out = agent("Log", status=status, description=description)
        assert out.returncode == 0, out.stderr
        return results(repo)[1][-1]

    def commit(edit, description):
        path = repo / "train.py"
        path.write_text(edit(path.read_text()))
        assert agent("Commit", description=description).returncode == 0

    # equal baselines: the noise floor; the best is their mean
    out = decide(2.0)
    assert decision(out) == "keep" and "(ran commit " in out.stdout
    log("keep", "baseline")
    out = decide(2.0)
    assert decision(out) == "keep" and field(out, "noise") == 0.0005
    log("keep", "baseline run 2")

    # a first run never passes alone: with one repeat of noise, the incumbent runs beside it first
    commit(lambda s: s.replace("MATRIX_LR = ", "MATRIX_LR = 1.0 * "), "a")
    out = decide(1.99)
    assert decision(out) == "rerun" and "trains the incumbent" in out.stdout and "1 repeat" in out.stdout
    assert agent("Log", status="keep", description="a").returncode == 1  # a rerun is never logged
    # a clear gain, confirmed on later runs beside the incumbent's: keep; Log writes the candidate's mean
    out = settle(agent, 1.99, 2.0)
    assert decision(out) == "keep" and "keep" in out.stdout.split("why:")[1]
    row = log("keep", "a")
    assert row[1] == "1.990000" and row[4] == "a"  # the candidate's mean, the description verbatim
    # no gain: discarded at the screen, after its one run, and Discard goes back to the kept commit
    commit(lambda s: s.replace("SCALAR_LR = ", "SCALAR_LR = 1.0 * "), "b")
    out = settle(agent, 1.995, 1.99)
    assert decision(out) == "discard" and "first run" in out.stdout
    assert log("discard")[1] == "1.995000"
    assert agent("Discard").returncode == 0
    # a spoiled run (starved by another process): rerun, unlogged; the same commit slow again is judged
    commit(lambda s: s.replace("EMBEDDING_LR = ", "EMBEDDING_LR = 1.0 * "), "e")
    out = decide(2.5, steps=16, mfu=5.0)
    assert decision(out) == "rerun" and "spoiled" in out.stdout
    out = settle(agent, 2.5, 1.99, steps=15)
    assert decision(out) == "discard" and "judged as they are" in out.stdout
    log("discard")
    assert agent("Discard").returncode == 0
    # deleting a comment is no simplification: judged as the no-op it is
    commit(lambda s: s.replace("# Model size\n", ""), "no comment")
    assert decision(settle(agent, 1.99, 1.99)) == "discard"
    log("discard")
    assert agent("Discard").returncode == 0
    # fewer lines of code, no worse: kept, credited for the lines
    commit(lambda s: s.replace("    frac = min(step / 300, 1)\n    return (1 - frac) * 0.85 + frac * 0.95\n",
                               "    return 0.95\n"), "simpler")
    out = settle(agent, 1.99, 1.99)
    assert decision(out) == "keep" and "credited to a shorter train.py" in out.stdout
    log("keep")
    # a crash: whatever status is typed, Log writes crash and zeros
    commit(lambda s: s + "\n# crash\n", "f")
    fake_run(repo, None, tail="Traceback (most recent call last):\nValueError: bad\n", end=1)
    out = agent("Decide")
    assert decision(out) == "crash" and "ValueError: bad" in out.stdout
    assert log("keep", "f")[1:4] == ["0.000000", "0.0", "crash"]
    # a running (or silently cut) run: no decision, say what to do
    fake_run(repo, None, steps=2, running=True)
    out = agent("Decide")
    assert out.returncode == 1 and decision(out) is None and "Poll" in out.stdout
    # the morning summary shows the incumbent's runs beside the experiments: the machine's drift
    review = subprocess.run([sys.executable, "analysis.py", "results.tsv"], cwd=repo, capture_output=True, text=True)
    assert re.search(r"the incumbent ran again \d+ times beside experiments", review.stdout), review.stdout


def test_two_worktrees_on_one_cache(tmp_path, smoke_cache):
    main = make_repo(tmp_path / "repo", smoke_cache, handicap=1.0)
    repo = main.repo
    # the human's side (README): identity once, one worktree and one agent per GPU
    subprocess.run('git config user.name "autoresearch agent" && git config user.email agent@localhost && '
                   'for i in 0 1; do git worktree add -q "worktrees/gpu$i" -b "autoresearch/two-gpu$i"; done',
                   shell=True, cwd=repo, check=True, env=main.env)
    agents = [make_agent(repo / "worktrees" / f"gpu{i}", smoke_cache, {"CUDA_VISIBLE_DEVICES": str(i)})
              for i in (0, 1)]
    for i, a in enumerate(agents):
        assert f"GPU pin: CUDA_VISIBLE_DEVICES={i}" in a("Check the data exists").stdout
        assert a("Make sure git can commit").returncode == 0
        assert a("Start the log").returncode == 0
    runs = [a("Run", background=True) for a in agents]  # at the same time, on one cache
    for proc in runs:
        proc.wait(timeout=600)
    for a in agents:
        if decision(a("Decide")) == "rerun":  # two runs at once on a small machine may stretch each other past 2x
            assert a("Run").returncode == 0
        assert decision(a("Decide")) == "keep", (a.repo / "run.log").read_text()[-2000:]
        assert a("Log", status="keep", description="baseline").returncode == 0
    review = subprocess.run([sys.executable, "analysis.py", "--json"], cwd=repo, capture_output=True, text=True)
    assert review.returncode == 0, review.stderr
    summary = json.loads(review.stdout)
    assert [x["log"] for x in summary["logs"]] == ["worktrees/gpu0/results.tsv", "worktrees/gpu1/results.tsv"]
    assert summary["counts"] == {"keep": 2, "discard": 0, "crash": 0}
    assert (repo / "progress.png").exists()


def test_run_log_names_the_commit_it_ran(fake_agent):
    """Run's first line names the commit; Decide and Log use it, not HEAD, which may have moved on."""
    agent, repo = fake_agent, fake_agent.repo
    for label in ("Create the branch", "Make sure git can commit", "Start the log"):
        assert agent(label, tag="label").returncode == 0
    ran = git(repo, "rev-parse", "--short=7", "HEAD").strip()
    # a train.py stand-in that reports to the run record as the judge does, and prints its summary
    (repo / "fake_train.py").write_text("from harness import runrecord\n"
                                        "runrecord.note('judge', {'val_bpb': 2.0, 'tokens': 100, 'train_tokens': 1000})\n"
                                        "print('val_bpb:          2.000000')\n")
    runner = "import sys; from harness.run import run; sys.exit(run(command=[sys.executable, 'fake_train.py']))"
    with open(repo / "run.log", "w") as log:
        assert subprocess.run([sys.executable, "-c", runner], cwd=repo, env=agent.env, stdout=log,
                              stderr=subprocess.STDOUT).returncode == 0
    assert (repo / "run.log").read_text().startswith(f"commit: {ran}\n")
    (repo / "train.py").write_text((repo / "train.py").read_text() + "\n# the next idea\n")
    assert agent("Commit", description="the next idea").returncode == 0
    head = git(repo, "rev-parse", "--short=7", "HEAD").strip()
    out = agent("Decide")
    assert f"(ran commit {ran})" in out.stdout and head not in out.stdout, out.stdout
    assert agent("Log", status="keep", description="baseline").returncode == 0
    assert results(repo)[1][-1][0] == ran


def test_a_baseline_whose_runs_disagree_in_steps_gets_a_third_run(fake_agent):
    """A starved second run (40% fewer steps) sets neither the bar nor the noise: the two runs
    of three whose steps agree do. Without the third run the noise would be 0.3 and the bar 2.15."""
    agent, repo = fake_agent, fake_agent.repo
    for label in ("Create the branch", "Make sure git can commit", "Start the log"):
        assert agent(label, tag="third").returncode == 0
    fake_run(repo, 2.0, steps=100)
    assert decision(agent("Decide")) == "keep"
    assert agent("Log", status="keep", description="baseline").returncode == 0
    fake_run(repo, 2.3, steps=60)
    out = agent("Decide")
    assert decision(out) == "keep" and "100 and 60 steps disagree" in out.stdout and "Run again" in out.stdout
    assert agent("Log", status="keep", description="baseline run 2").returncode == 0
    fake_run(repo, 2.01, steps=98)  # the same commit again: not "no change", the baseline's third run
    out = agent("Decide")
    assert decision(out) == "keep" and "runs 1 and 3" in out.stdout, out.stdout
    assert field(out, "best") == pytest.approx(2.005) and field(out, "noise") == pytest.approx(0.01)
    assert agent("Log", status="keep", description="baseline run 3").returncode == 0
    assert results(repo)[1][-1][4] == "baseline run 3 (the bar: runs 1 and 3)"
    (repo / "train.py").write_text((repo / "train.py").read_text() + "\n# better\n")
    assert agent("Commit", description="better").returncode == 0
    out = settle(agent, 1.95, 2.005)
    assert decision(out) == "keep", out.stdout
    assert agent("Log", status="keep", description="better").returncode == 0
    rows, _ = analysis.read_log(str(repo / "results.tsv"))
    summary = analysis.format_text(analysis.summarize(rows), "results.tsv")
    assert "the baseline (mean of runs 1 and 3 of 3), its pair 0.010000 apart" in summary, summary
    assert "the baseline's 3, then 1 experiment: 1 kept" in summary and "improved  0.055000" in summary


def test_a_run_the_machine_stretched_past_the_kill_is_rerun_not_a_crash(fake_agent):
    agent, repo = fake_agent, fake_agent.repo
    for label in ("Create the branch", "Make sure git can commit", "Start the log"):
        assert agent(label, tag="stretch").returncode == 0

    def killed(trained, wall):
        fake_run(repo, None, steps=10, end=137, trained=(trained, wall), stopped="TIMEOUT: killed after 540 s")

    killed(200, 470)  # a neighbour took more than half the cores: the kill came before the budget did
    out = agent("Decide")
    assert decision(out) == "rerun" and "200 s of training done in 470 s" in out.stdout
    refused = agent("Log", status="crash", description="baseline")
    assert refused.returncode == 1 and "don't log it" in refused.stderr
    killed(210, 480)  # the same commit killed so again: a crash, but the baseline's fix is no edit
    out = agent("Decide")
    assert decision(out) == "crash" and "no change to train.py fixes" in out.stdout
    assert "Log it as crash, description `baseline`" in out.stdout  # the night's agent had to guess it
    killed(290, 300)  # a quiet machine: the code's own slowness
    assert decision(agent("Decide")) == "crash"


def test_log_refuses_a_status_that_contradicts_decide(fake_agent):
    agent, repo = fake_agent, fake_agent.repo
    for label in ("Create the branch", "Make sure git can commit", "Start the log"):
        assert agent(label, tag="strict").returncode == 0
    for description in ("baseline", "baseline run 2"):
        fake_run(repo, 2.0)
        assert agent("Log", status="keep", description=description).returncode == 0
    (repo / "train.py").write_text((repo / "train.py").read_text() + "\n# worse\n")
    assert agent("Commit", description="worse").returncode == 0
    assert decision(settle(agent, 2.5, 2.0)) == "discard"
    refused = agent("Log", status="keep", description="worse")
    assert refused.returncode == 1 and "Decide says discard" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and len(results(repo)[1]) == 2  # nothing written
    assert agent("Log", status="discard", description="worse").returncode == 0
    assert agent("Discard").returncode == 0
    (repo / "train.py").write_text((repo / "train.py").read_text() + "\n# a hair better\n")
    assert agent("Commit", description="a hair better").returncode == 0
    fake_run(repo, 1.999)  # promising, not beyond doubt: the keep rule wants it again before anything is logged
    assert decision(agent("Decide")) == "rerun"
    refused = agent("Log", status="keep", description="a hair better")
    assert refused.returncode == 1 and "don't log it" in refused.stderr and len(results(repo)[1]) == 3
