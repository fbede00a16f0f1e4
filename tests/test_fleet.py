"""Many agents, one record: program.md's Log and Board, README's hub and keep-going recipes, played
literally in throwaway repositories with written run.logs (no training) and a bare repository as
the hub. harness/record.py's own guarantees (gc, concurrency, hostile entries, timeouts) are in
test_record.py; here the commands an agent and a human actually type.
"""
import json
import os
import re
import subprocess
import sys

from conftest import ROOT
from test_ratchet import decision, fake_run, git, make_agent, make_repo, results, settle


def start(agent, tag):
    for label in ("Create the branch", "Make sure git can commit", "Start the log"):
        assert agent(label, tag=tag).returncode == 0


def log_run(agent, v, status, description, steps=100):
    fake_run(agent.repo, v, steps=steps)
    out = agent("Log", status=status, description=description)
    assert out.returncode == 0, out.stderr
    return out


def experiment(agent, description, v, status):
    """An idea whose runs score v each (the incumbent's: its logged value), settled by the keep rule."""
    path = agent.repo / "train.py"
    path.write_text(path.read_text() + f"\n# {description}\n")
    assert agent("Commit", description=description).returncode == 0
    sha = git(agent.repo, "rev-parse", "HEAD").strip()
    kept = [float(r[1]) for r in results(agent.repo)[1] if r[3] == "keep"]
    assert decision(settle(agent, v, kept[-1])) == status
    out = agent("Log", status=status, description=description)
    assert out.returncode == 0, out.stderr
    if status != "keep":
        assert agent("Discard").returncode == 0
    return sha


def board(agent, *flags):
    out = subprocess.run(agent.command("Board") + " " + " ".join(flags), shell=True, executable="/bin/bash",
                         cwd=agent.repo, env=agent.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def test_a_discarded_experiment_reaches_another_clone_through_the_hub(tmp_path):
    hub = tmp_path / "hub.git"
    subprocess.run(["git", "init", "-q", "--bare", str(hub)], check=True)
    a = make_repo(tmp_path / "a", str(tmp_path / "no-cache"))
    git(a.repo, "remote", "add", "hub", str(hub))
    start(a, "alice")
    log_run(a, 2.0, "keep", "baseline")
    log_run(a, 2.0, "keep", "baseline run 2")
    kept = experiment(a, "a wider MLP", 1.9, "keep")
    discarded = experiment(a, "no value embeddings", 2.1, "discard")
    assert git(a.repo, "rev-parse", "HEAD").strip() == kept  # Discard went back...
    subprocess.run(["git", "gc", "-q", "--prune=now"], cwd=a.repo, check=True)
    assert "# no value embeddings" in git(a.repo, "show", f"{discarded}:train.py")  # ...and lost no code
    assert git(a.repo, "log", "--format=%s", "autoresearch/alice").splitlines()[0] == "a wider MLP"

    # another machine: a clone of the hub, its own agent; Board fetches alice's record
    b_repo = tmp_path / "b"
    subprocess.run(["git", "clone", "-q", str(hub), str(b_repo)], check=True)
    subprocess.run(["git", "checkout", "-q", "-b", "main", "origin/autoresearch/alice"], cwd=b_repo, check=True)
    git(b_repo, "remote", "rename", "origin", "hub")
    b = make_agent(b_repo, str(tmp_path / "no-cache"))
    start(b, "bob")
    text = board(b).stdout
    assert "alice" in text and "a wider MLP" in text and "no value embeddings" in text
    shown = json.loads(board(b, "--json").stdout)
    assert {(e["agent"], e["commit"], e["status"]) for e in shown["experiments"]} >= {
        ("alice", kept, "keep"), ("alice", discarded, "discard")}
    assert [(x["agent"], x["commit"], x["val_bpb"]) for x in shown["best"]] == [("alice", kept, 1.9)]
    assert "# no value embeddings" in git(b_repo, "show", f"{discarded}:train.py")
    assert "+# a wider MLP" in board(b, "--diff").stdout

    # Adopt alice's kept commit as bob's own experiment
    assert b("Adopt", sha=kept).returncode == 0
    assert b("Commit", description=f"adopt alice {kept[:7]}: a wider MLP").returncode == 0
    assert "# a wider MLP" in (b_repo / "train.py").read_text()


def test_an_unreachable_hub_costs_one_warning_and_the_next_log_catches_up(tmp_path):
    hub = tmp_path / "hub.git"
    a = make_repo(tmp_path / "a", str(tmp_path / "no-cache"))
    git(a.repo, "remote", "add", "hub", str(tmp_path / "not-there.git"))
    start(a, "night")
    out = log_run(a, 2.0, "keep", "baseline")
    assert results(a.repo)[1][-1][3:] == ["keep", "baseline"]  # logged all the same
    warnings = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: hub unreachable"), out.stderr
    subprocess.run(["git", "init", "-q", "--bare", str(hub)], check=True)
    git(a.repo, "remote", "set-url", "hub", str(hub))
    out = log_run(a, 2.0, "keep", "baseline run 2")
    assert out.stderr.strip() == ""
    shown = git(hub, "show", "autoresearch-log/night:log.jsonl").splitlines()
    assert [json.loads(line)["description"] for line in shown] == ["baseline", "baseline run 2"]


def test_the_morning_review_draws_every_agent_of_the_record(tmp_path):
    a = make_repo(tmp_path / "a", str(tmp_path / "no-cache"))
    start(a, "one")
    log_run(a, 2.0, "keep", "baseline")
    log_run(a, 2.0, "keep", "baseline run 2")
    experiment(a, "shared idea", 2.2, "discard")
    # a second agent in a worktree of the same clone: no hub needed to see it
    git(a.repo, "worktree", "add", "-q", "worktrees/two", "-b", "autoresearch/two", "main")
    two = make_agent(a.repo / "worktrees" / "two", str(tmp_path / "no-cache"))
    assert two("Start the log").returncode == 0
    log_run(two, 2.1, "keep", "baseline")
    log_run(two, 2.1, "keep", "baseline run 2")
    experiment(two, "Shared  idea", 1.8, "keep")
    (a.repo / "worktrees" / "two" / "results.tsv").unlink()  # its log lost: the record still has it
    review = subprocess.run([sys.executable, "analysis.py"], cwd=a.repo, capture_output=True, text=True)
    assert review.returncode == 0, review.stderr
    assert "agent two" in review.stdout
    assert re.search(r"best per setup and device.*\n.*1\.800000 by two", review.stdout), review.stdout
    assert re.search(r"tried by several agents:\n  'shared idea': one discard .*two keep", review.stdout)


def test_keep_going_restarts_the_agent_until_the_stop_file_goes(tmp_path):
    a = make_repo(tmp_path / "a", str(tmp_path / "no-cache"))
    start(a, "loop")
    readme = open(os.path.join(ROOT, "README.md")).read()
    recipe = re.search(r"### Keep it going.*?```bash\n(.*?)```", readme, re.S).group(1)
    # the stand-in agent: one experiment through program.md's blocks per turn, then it exits; the
    # third turn removes the stop file, as the human would in the morning
    stand_in = tmp_path / "agent.py"
    stand_in.write_text(f"""
import os, subprocess, sys
sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
from test_ratchet import fake_run, make_agent, settle
from pathlib import Path
repo = Path.cwd()
agent = make_agent(repo, {str(tmp_path / 'no-cache')!r})
turn = len((repo / "results.tsv").read_text().splitlines())
if turn > 2:
    (repo / "train.py").write_text((repo / "train.py").read_text() + f"# idea {{turn}}\\n")
    assert agent("Commit", description=f"idea {{turn}}").returncode == 0
    out = settle(agent, 2.0 - 0.01 * turn, 1.985)  # the baseline's mean
else:
    fake_run(repo, 2.0 - 0.01 * turn)
    out = agent("Decide")
decision = [l.split()[1] for l in out.stdout.splitlines() if l.startswith("decision:")][0]
assert agent("Log", status=decision, description=f"turn {{turn}}").returncode == 0
if turn == 3:
    os.remove(".keep-going")
""")
    env = dict(a.env, AGENT=f"{sys.executable} {stand_in}")
    loop = subprocess.run(recipe.replace("sleep 5", "sleep 0.1"), shell=True, executable="/bin/bash",
                          cwd=a.repo, env=env, capture_output=True, text=True, timeout=300)
    assert loop.returncode == 0, loop.stderr
    assert [row[4] for row in results(a.repo)[1]] == ["turn 1", "turn 2", "turn 3"]
    assert not (a.repo / ".keep-going").exists()


def test_the_board_compares_with_the_readers_last_run_not_its_last_crash(monkeypatch):
    sys.path.insert(0, ROOT)
    from harness import board
    asked = []  # each question is a git process: once per Board, not once per entry (10,000 a night)
    monkeypatch.setattr(board.record, "agent_tag", lambda repo=".": asked.append(repo) or "me")
    monkeypatch.setattr(board.record, "judge_identity", lambda repo=".": "judge")
    monkeypatch.setattr(board, "read_run", lambda: None)
    entries = [dict(agent="me", setup="smoke", device="CPU x (2 cores)"), dict(agent="other", setup="small", device="GPU"),
               dict(agent="me", setup="", device="")]  # a crash: run.log had no summary
    assert board.reader(entries * 100) == ("judge", "smoke", "CPU x (2 cores)") and len(asked) == 1
