"""The shared research record: real git repositories in temporary folders (a bare hub, clones and
worktrees as agents), no training."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from harness import board, record  # noqa: E402

JUDGE = "prepare.py:1111111 analysis.py:2222222 pyproject.toml:-"


@pytest.fixture(autouse=True)
def bare_git(tmp_path, monkeypatch):
    """A git with no identity at all (useConfigOnly makes git refuse to guess one), so every test
    also proves that recording never fails for lack of git config."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tuseConfigOnly = true\n[init]\n\tdefaultBranch = main\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
                 "GIT_SSH_COMMAND", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "EMAIL"):
        monkeypatch.delenv(name, raising=False)


def git(cwd, *args, check=True):
    """git as the test (not harness/record.py) runs it, with an identity for its own commits."""
    result = subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
                            cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {result.stderr}")
    return result.stdout.strip()


@pytest.fixture
def hub(tmp_path):
    hub = tmp_path / "hub.git"
    git(tmp_path, "init", "--quiet", "--bare", str(hub))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "--quiet", str(hub), str(seed))
    for name, text in {"train.py": "lr = 0.04\n", "prepare.py": "# judge\n", "analysis.py": "# log\n"}.items():
        (seed / name).write_text(text)
    git(seed, "add", ".")
    git(seed, "commit", "--quiet", "-m", "seed")
    git(seed, "push", "--quiet", "origin", "main")
    return hub


def agent(hub, tag, folder=None):
    """A clone of the hub (remote named hub) on branch autoresearch/<tag>."""
    path = folder or hub.parent / tag
    git(hub.parent, "clone", "--quiet", "-o", "hub", str(hub), str(path))
    git(path, "checkout", "--quiet", "-b", f"autoresearch/{tag}")
    return str(path)


def experiment(repo, text):
    with open(os.path.join(repo, "train.py"), "w") as f:
        f.write(text)
    git(repo, "commit", "--quiet", "-am", text.strip()[:50])
    return git(repo, "rev-parse", "HEAD")


def log(repo, sha, val, status="keep", description="idea", **kw):
    kw = {"setup": "gpt-small", "device": "H100", "judge": JUDGE, **kw}
    return record.record(repo, sha, val, 40.0, status, description, **kw)


def test_discarded_commit_survives_gc_and_travels_to_another_clone(hub):
    a, b = agent(hub, "a"), agent(hub, "b")
    base = experiment(a, "lr = 0.04\n# baseline\n")
    log(a, base, 1.0, description="baseline")
    lost = experiment(a, "lr = 0.08  # the discarded idea\n")
    log(a, lost, 1.05, "discard", "double the lr")
    git(a, "reset", "--quiet", "--hard", "HEAD~1")  # Discard
    git(a, "reflog", "expire", "--expire=now", "--all")
    git(a, "gc", "--quiet", "--prune=now")
    assert "discarded idea" in git(a, "show", f"{lost}:train.py")
    assert git(a, "rev-parse", "HEAD") == base  # the branch holds only kept commits
    assert record.push(a) is None
    assert record.fetch(b) is None
    assert git(b, "show", f"{lost}:train.py") == "lr = 0.08  # the discarded idea"
    # the log commit: first parent the previous log commit, second the experiment; one-line message
    tip = git(a, "rev-parse", "refs/heads/autoresearch-log/a")
    parents = git(a, "log", "-1", "--format=%P", tip).split()
    assert parents[1] == lost and git(a, "log", "-1", "--format=%P", parents[0]) == base  # the first has no log parent
    assert git(a, "log", "-1", "--format=%B", tip).strip() == "a: discard 1.050000 double the lr"
    assert git(hub, "merge-base", "--is-ancestor", lost, "refs/heads/autoresearch/a", check=False) == ""
    assert git(hub, "rev-parse", "refs/heads/autoresearch/a") == base  # force-pushed after the rewind
    assert git(a, "log", "-1", "--format=%an <%ae>", tip) == "autoresearch agent <agent@localhost>"
    git(b, "config", "user.name", "Agent B")  # an identity in the clone's own config is used as is
    git(b, "config", "user.email", "b@lab")
    log(b, experiment(b, "# b\n"), 1.1)
    assert git(b, "log", "-1", "--format=%an <%ae>", "autoresearch-log/b") == "Agent B <b@lab>"


def test_recording_touches_neither_work_tree_nor_index_nor_head(hub):
    a = agent(hub, "a")
    sha = experiment(a, "lr = 0.05\n")
    (hub.parent / "a" / "train.py").write_text("half-edited\n")
    (hub.parent / "a" / "new.py").write_text("staged\n")
    git(a, "add", "new.py")
    before = git(a, "status", "--porcelain"), git(a, "rev-parse", "HEAD"), git(a, "ls-files", "-s")
    log(a, sha, 0.99, description="x" * 2000 + "\nsecond line")
    assert (git(a, "status", "--porcelain"), git(a, "rev-parse", "HEAD"), git(a, "ls-files", "-s")) == before
    [entry], warnings = record.read_record(a)
    assert warnings == [] and len(entry["description"]) == record.MAX_DESCRIPTION
    assert "\n" not in entry["description"]
    assert len(git(a, "log", "-1", "--format=%B", "autoresearch-log/a").strip()) <= 100


LOOP = textwrap.dedent("""
    import os, subprocess, sys, time
    sys.path.insert(0, {root!r})
    from harness import record
    repo, tag, start, push = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "push"
    while not os.path.exists(start):
        time.sleep(0.001)
    for i in range(10):
        if push:  # an agent: commit, Log, push
            open(os.path.join(repo, "train.py"), "w").write(f"# {{tag}} {{i}}\\n")
            subprocess.run(["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit",
                            "--quiet", "-am", f"{{tag}} {{i}}"], check=True)
        sha = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
        record.record(repo, sha, 1.0 + i / 100, 10, "keep", f"{{tag}} idea {{i}}", agent=tag)
        if push:
            warning = record.push(repo, tag)
            assert warning is None, warning
""").format(root=ROOT)


def run_together(tmp_path, jobs):
    start = tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", LOOP, repo, tag, str(start), mode]) for repo, tag, mode in jobs]
    time.sleep(0.5)  # both interpreters up and waiting, then go at the same moment
    start.write_text("go")
    assert [p.wait(timeout=120) for p in procs] == [0] * len(procs)


def test_two_agents_logging_and_pushing_at_the_same_moment_lose_nothing(hub, tmp_path):
    a, b, reader = agent(hub, "a"), agent(hub, "b"), agent(hub, "reader")
    run_together(tmp_path, [(a, "a", "push"), (b, "b", "push")])
    assert record.fetch(reader) is None
    entries, warnings = record.read_record(reader)
    assert warnings == []
    assert sorted(e["description"] for e in entries) == sorted(f"{t} idea {i}" for t in "ab" for i in range(10))
    for e in entries:  # every experiment commit came along with the logs
        assert git(reader, "show", f"{e['commit']}:train.py").startswith(f"# {e['agent']} ")


def test_two_processes_appending_to_one_log_lose_nothing(hub, tmp_path):
    """The compare-and-swap: a read-modify-write race on one ref must retry, not overwrite."""
    a = agent(hub, "a")
    run_together(tmp_path, [(a, "a", "local"), (a, "a", "local")])
    entries, _ = record.read_record(a)
    assert len(entries) == 20


def test_unreachable_hub_warns_once_logs_locally_and_the_next_push_catches_up(hub):
    a, reader = agent(hub, "a"), agent(hub, "reader")
    git(a, "remote", "set-url", "hub", str(hub.parent / "nowhere.git"))
    for i in range(2):
        log(a, experiment(a, f"# {i}\n"), 1.0 - i / 10)
        warning = record.push(a)
        assert warning.startswith("warning: hub unreachable") and "\n" not in warning
    assert record.fetch(a).startswith("warning: hub unreachable")
    assert len(record.read_record(a)[0]) == 2  # recorded all the same
    git(a, "remote", "set-url", "hub", str(hub))
    log(a, experiment(a, "# 2\n"), 0.8)
    assert record.push(a) is None
    record.fetch(reader)
    assert [e["val_bpb"] for e in record.read_record(reader)[0]] == [1.0, 0.9, 0.8]


@pytest.mark.parametrize("command", ["fetch", "push"])
def test_a_hung_ssh_is_cut_off_by_the_timeout(hub, monkeypatch, command):
    a = agent(hub, "a")
    log(a, experiment(a, "# 1\n"), 1.0)
    git(a, "remote", "set-url", "hub", "ssh://hub.invalid/srv/hub.git")
    marker = f"sleep 29.{os.getpid()}"  # a unique command line, to see if the hung child is left behind
    monkeypatch.setenv("GIT_SSH_COMMAND", marker + ";")  # the user's own ssh command, hanging
    t0 = time.monotonic()
    warning = record.push(a, timeout=1) if command == "push" else record.fetch(a, timeout=1)
    assert time.monotonic() - t0 < 5
    assert warning.startswith("warning: hub unreachable (no answer in 1 s)")
    time.sleep(0.2)
    assert marker not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert len(record.read_record(a)[0]) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_hub_warns(hub):
    a = agent(hub, "a")
    log(a, experiment(a, "# 1\n"), 1.0)
    os.chmod(hub, 0)
    try:
        assert record.push(a).startswith("warning: hub unreachable")
    finally:
        os.chmod(hub, 0o755)
    assert record.push(a) is None


def write_log(repo, tag, data, where="refs/heads/autoresearch-log/"):
    """A log commit made by hand, as a hostile agent could push one."""
    blob = subprocess.run(["git", "-C", repo, "hash-object", "-w", "--stdin"], input=data,
                          capture_output=True, check=True).stdout.decode().strip()
    tree = subprocess.run(["git", "-C", repo, "mktree"], input=f"100644 blob {blob}\tlog.jsonl\n".encode(),
                          capture_output=True, check=True).stdout.decode().strip()
    commit = git(repo, "commit-tree", tree, "-m", "hostile")
    git(repo, "update-ref", where + tag, commit)


def good(tag, val, commit="a" * 40, **kw):
    return {"commit": commit, "val_bpb": val, "memory_gb": 1.0, "status": "keep", "description": "ok",
            "agent": tag, "setup": "gpt-small", "device": "H100", "judge": JUDGE, "time": 1e9, **kw}


def test_hostile_entries_are_skipped_with_one_warning_and_never_best(hub):
    a, evil, reader = agent(hub, "a"), agent(hub, "evil"), agent(hub, "reader")
    log(a, experiment(a, "# honest\n"), 1.0, description="honest")
    record.push(a)
    bad = [good("evil", "0.5"), good("evil", 0.6, description="x" * 10_000), good("evil", 1e-9),
           good("evil", -1), good("evil", 0.7, agent="a"), good("evil", 0.8, commit="HEAD~1"),
           good("evil", 0.85, status="merged"), good("evil", 0.9, description="\x1b[2Jclear"),
           good("evil", 0.95, judge=["list"]), good("evil", True), 42]
    missing = good("evil", 0.4)
    del missing["status"]
    lines = [json.dumps(x).encode() for x in bad + [missing]]
    lines += [b"\xff\xfe\x00junk\x01", b'{"val_bpb": NaN}', b"[" * 3000, b'{"truncated": ']
    lines.append(json.dumps(good("evil", 1.2, description="the one honest line")).encode())
    write_log(evil, "evil", b"\n".join(lines) + b"\n")
    write_log(evil, "huge", b"\n" * (record.MAX_LOG_BYTES + 1))
    git(evil, "push", "--quiet", "hub", "refs/heads/autoresearch-log/evil", "refs/heads/autoresearch-log/huge")
    assert record.fetch(reader) is None
    entries, warnings = record.read_record(reader)
    assert sorted(e["description"] for e in entries) == ["honest", "the one honest line"]
    assert sorted(warnings) == ["warning: hub log of agent evil: 16 malformed entries skipped",
                                "warning: hub log of agent huge: log.jsonl is 4 MB, over the 4 MB cap; skipped"]
    b = board.board(entries, JUDGE, "gpt-small", "H100")
    assert [x["val_bpb"] for x in b["best"]] == [1.0]
    assert "\x1b" not in board.format_board(b)


def test_another_judges_result_is_listed_apart_never_best(hub):
    a, cheat = agent(hub, "a"), agent(hub, "cheat")
    mine = record.judge_identity(a)
    with open(os.path.join(cheat, "prepare.py"), "a") as f:
        f.write("def evaluate_bpb(*a): return 0.1  # a bent judge\n")
    theirs = record.judge_identity(cheat)
    assert theirs != mine and theirs.startswith("judge ")
    for repo, val in ((a, 1.0), (cheat, 0.5)):
        record.record(repo, experiment(repo, f"# {val}\n"), val, 1, "keep", "x", setup="s", device="d")
        record.push(repo)
    record.fetch(a)
    b = board.board(record.read_record(a)[0], mine, "s", "d")
    assert [(x["agent"], x["val_bpb"]) for x in b["best"]] == [("a", 1.0)]
    assert {(x["agent"], x["comparable"]) for x in b["experiments"]} == {("a", True), ("cheat", False)}
    assert b["other_judge"] == 1 and "1 judged by another judge" in board.format_board(b)


def test_worktrees_of_one_clone_see_each_other_with_no_hub(tmp_path):
    main = tmp_path / "main"
    git(tmp_path, "init", "--quiet", str(main))
    (main / "train.py").write_text("# seed\n")
    git(main, "add", "train.py")
    git(main, "commit", "--quiet", "-m", "seed")
    git(main, "checkout", "--quiet", "-b", "autoresearch/gpu0")
    other = str(tmp_path / "gpu1")
    git(main, "worktree", "add", "--quiet", "-b", "autoresearch/gpu1", other)
    assert (record.agent_tag(str(main)), record.agent_tag(other)) == ("gpu0", "gpu1")
    log(str(main), experiment(str(main), "# 0\n"), 1.0)
    log(other, experiment(other, "# 1\n"), 0.9)
    assert record.push(other) is None and record.fetch(other) is None  # no hub: nothing to do
    for repo in (str(main), other):
        entries, warnings = record.read_record(repo)
        assert sorted(e["agent"] for e in entries) == ["gpu0", "gpu1"] and warnings == []


def test_best_is_per_setup_and_device_and_only_kept_results_count():
    e = [good("a", 1.0, setup="s1", device="H100"), good("b", 0.9, setup="s1", device="H100"),
         good("a", 0.5, setup="s1", device="H100", status="discard", commit="b" * 40),
         good("c", 1.3, setup="s1", device="cpu"), good("c", 1.2, setup="s2", device="H100"),
         good("d", 0.1, setup="s2", device="H100", judge="prepare.py:other")]
    entries = [record.validate(x, x["agent"]) for x in e]
    b = board.board(entries, JUDGE, "s1", "H100")
    assert {(x["setup"], x["device"], x["agent"], x["val_bpb"]) for x in b["best"]} == {
        ("s1", "H100", "b", 0.9), ("s1", "cpu", "c", 1.3), ("s2", "H100", "c", 1.2)}
    assert b["comparable"] == 3


def test_own_log_beats_the_hub_copy_and_others_take_the_longer_log(hub):
    a, b, mallory = agent(hub, "a"), agent(hub, "b"), agent(hub, "mallory")
    log(a, experiment(a, "# 1\n"), 1.0)
    record.push(a)
    fake = [json.dumps(good("a", 0.5, time=t)).encode() for t in range(3)]
    write_log(mallory, "a", b"\n".join(fake))  # a longer log under a's name, forced onto the hub
    git(mallory, "push", "--quiet", "--force", "hub", "refs/heads/autoresearch-log/a")
    log(b, experiment(b, "# b\n"), 1.1)
    record.push(b)
    log(a, experiment(a, "# 2\n"), 0.9)  # not pushed yet: the hub copy is stale
    record.fetch(a)
    write_log(a, "b", b"", where="refs/heads/autoresearch-log/")  # a stale, empty local copy of b
    entries, _ = record.read_record(a)
    assert [(e["agent"], e["val_bpb"]) for e in entries] == [("a", 1.0), ("a", 0.9), ("b", 1.1)]


def test_board_text_is_short_and_says_what_happened():
    entries = [record.validate(good(f"agent{i % 30}", 1 + i / 1000, status=("keep", "discard", "crash")[i % 3],
                                    val_bpb=0.0 if i % 3 == 2 else 1 + i / 1000, time=1e9 + i,
                                    commit="a" * 40 if i < 30 else f"{i:040x}",
                                    description=f"idea {i}"), f"agent{i % 30}") for i in range(300)]
    b = board.board(entries, JUDGE, "gpt-small", "H100")
    text = board.format_board(b)
    assert len(text.splitlines()) <= 25
    assert "idea 299" in text and "crashed" in text and "discarded" in text and "kept" in text
    assert "agent0" in text and "aaaaaaa" in text and "comparable" in text
    assert [x["description"] for x in b["recent"]][-1] == "idea 299"
    assert b["agents"]["agent0"]["first"] == 1.0 and b["agents"]["agent0"]["best"] == 1.0
    assert json.loads(json.dumps(b)) == b


def test_fleet_logs_have_read_logs_shape():
    import analysis
    row = analysis.parse_row(["abcdef1", "1.0", "40.0", "keep", "idea"])
    entries = [record.validate(good("b", 1.0, time=2), "b"), record.validate(good("a", 1.2, time=5), "a"),
               record.validate(good("a", 1.1, time=1, status="discard"), "a")]
    logs = board.fleet_logs(entries)
    assert set(logs) == {"a", "b"}
    assert [(r["val_bpb"], r["index"]) for r in logs["a"]] == [(1.1, 1), (1.2, 2)]
    assert set(logs["a"][0]) == set(row) | {"index"} and logs["a"][0]["commit"] == "aaaaaaa"


def test_record_refuses_what_no_reader_would_accept(hub):
    a = agent(hub, "a")
    sha = experiment(a, "# 1\n")
    with pytest.raises(ValueError):
        log(a, sha, float("nan"))
    with pytest.raises(ValueError):
        log(a, "no-such-commit", 1.0)
    git(a, "checkout", "--quiet", "main")
    with pytest.raises(ValueError, match="autoresearch/<tag>"):
        log(a, sha, 1.0)
    assert record.read_record(a) == ([], [])
