"""The shared research record in git: every logged experiment (keep, discard or crash) with its
result, one append-only log per agent, shared through a remote named `hub`.

Agent = run tag: branch `autoresearch/<tag>` writes only `refs/heads/autoresearch-log/<tag>`.
Each record is one commit made with plumbing (no checkout, no index): its first parent is the
previous log commit, its second parent the experiment's commit (so a discarded commit stays
reachable, survives gc and travels with the log), and its tree is `log.jsonl`, the whole log.
Everything read from another agent or the hub is untrusted and validated line by line.
Standard library only: analysis.py imports this and must stay torch-free and fast. Not part of
the judge: it records and shares results, and decides none.
"""

import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
import time

from harness import JUDGE_FILES
from harness.run import watch

STATUSES = ("keep", "discard", "crash")
LOCAL, HUB = "refs/heads/autoresearch-log/", "refs/remotes/hub/autoresearch-log/"
MAX_LOG_BYTES = 4 << 20     # a hub log bigger than this is skipped unread
MAX_LINE_BYTES = 4096       # an honest entry is ~400 bytes
MAX_DESCRIPTION = 500
MAX_LABEL = 200             # setup, device, judge
MIN_BPB = 0.01              # no language model gets near this; a lower one is a lie or a bug
HUB_TIMEOUT = 10            # seconds; a hung ssh must not eat an experiment
SHA = re.compile(r"[0-9a-f]{40}")
TAG = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._/-]{0,99}")


def git(repo, *args, input=None, env=None, check=True):
    result = subprocess.run(["git", "-C", repo, *args], input=input, env=env, capture_output=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def agent_tag(repo="."):
    """The run tag of the current branch `autoresearch/<tag>`, or None off such a branch."""
    branch = git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False).decode().strip()
    tag = branch[len("autoresearch/"):] if branch.startswith("autoresearch/") else ""
    return tag if TAG.fullmatch(tag) else None


def judge_identity(repo="."):
    """What judges a result: one digest of the blob hashes of the judge's files (harness.JUDGE_FILES)
    as they are in the work tree, a missing file counted as such, e.g. "judge 3f9a1c0b2d4e"."""
    top = git(repo, "rev-parse", "--show-toplevel").decode().strip()
    present = [f for f in JUDGE_FILES if os.path.isfile(os.path.join(top, f))]
    hashes = git(top, "hash-object", "--", *present).decode().split() if present else []
    found = dict(zip(present, hashes))
    listing = "\n".join(f"{f} {found.get(f, '-')}" for f in JUDGE_FILES)
    return "judge " + hashlib.sha1(listing.encode()).hexdigest()[:12]


def identity_env(repo):
    """os.environ, plus a fallback author when git has none, so recording never fails on config."""
    env = dict(os.environ)
    if subprocess.run(["git", "-C", repo, "var", "GIT_COMMITTER_IDENT"], capture_output=True).returncode != 0:
        for role in ("AUTHOR", "COMMITTER"):
            env.setdefault(f"GIT_{role}_NAME", "autoresearch agent")
            env.setdefault(f"GIT_{role}_EMAIL", "agent@localhost")
    return env


def one_line(text, limit):
    return " ".join(str(text).split())[:limit]


def record(repo, commit, val_bpb, memory_gb, status, description, setup="", device="",
           num_steps=None, training_seconds=None, agent=None, judge=None, now=None):
    """Append one experiment to this agent's log ref; returns the entry (a dict) as written.
    Raises ValueError for an entry no reader would accept, RuntimeError if git fails."""
    tag = agent or agent_tag(repo)
    if tag is None:
        raise ValueError("not on a branch autoresearch/<tag>: check out the run's branch, then Log again")
    sha = git(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", check=False).decode().strip()
    if not SHA.fullmatch(sha):
        raise ValueError(f"{commit!r} is not a commit in this repository")
    entry = {"commit": sha, "val_bpb": float(val_bpb), "memory_gb": float(memory_gb), "status": status,
             "description": one_line(description, MAX_DESCRIPTION), "agent": tag,
             "setup": one_line(setup, MAX_LABEL), "device": one_line(device, MAX_LABEL),
             "num_steps": num_steps, "training_seconds": training_seconds,
             "judge": judge if judge is not None else judge_identity(repo),
             "time": round(time.time() if now is None else now, 3)}
    entry = validate(entry, tag)  # what we write must pass the check every reader applies
    line = json.dumps(entry, ensure_ascii=False).encode() + b"\n"
    message = one_line(f"{tag}: {status} {entry['val_bpb']:.6f} {entry['description']}", 100)
    ref, env = LOCAL + tag, identity_env(repo)
    for _ in range(50):  # compare-and-swap: another process may append between our read and write
        old = git(repo, "rev-parse", "--verify", "--quiet", ref, check=False).decode().strip()
        log = git(repo, "cat-file", "blob", f"{old}:log.jsonl") if old else b""
        blob = git(repo, "hash-object", "-w", "--stdin", input=log + line).decode().strip()
        tree = git(repo, "mktree", input=f"100644 blob {blob}\tlog.jsonl\n".encode()).decode().strip()
        parents = ["-p", old] if old else []
        new = git(repo, "commit-tree", tree, *parents, "-p", sha, "-m", message, env=env).decode().strip()
        swap = ["git", "-C", repo, "update-ref", "-m", "autoresearch log", ref, new, old or "0" * 40]
        if subprocess.run(swap, capture_output=True).returncode == 0:
            return entry
        time.sleep(0.01)
    raise RuntimeError(f"could not update {ref}: it kept changing under us; Log again")


def bounded_git(repo, args, timeout):
    """Run git against the hub with no prompts and a hard time limit; returns an error or None.
    The whole process group is killed on timeout (harness/run.py's watch): a hung ssh child would
    otherwise keep git's output open and make us wait for it anyway."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=5")
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a killed ssh's children cannot hold it open
        code, stopped = watch(["git", "-C", repo, *args], timeout, env=env, stdout=subprocess.DEVNULL,
                              stderr=err, announce=False)
        err.seek(0)
        lines = [l for l in err.read().decode(errors="replace").splitlines() if l.strip()]
    if stopped:
        return f"no answer in {timeout:g} s" if stopped.startswith("TIMEOUT") else f"stopped ({stopped})"
    if code != 0:
        lines = [l for l in lines if l.startswith(("fatal:", "error:"))] or lines  # the cause, not the advice
        return one_line(lines[0] if lines else f"git exited with {code}", 200)
    return None


def has_hub(repo):
    return "hub" in git(repo, "remote", check=False).decode().split()


def push(repo=".", tag=None, timeout=HUB_TIMEOUT):
    """Push this agent's log (fast-forward) and branch (forced: Discard rewinds it) to `hub`.
    Returns None, or one warning line; never raises. The next push sends whatever is pending."""
    tag = tag or agent_tag(repo)
    if tag is None or not has_hub(repo):
        return None
    specs = [f"{LOCAL}{tag}:{LOCAL}{tag}"]
    if git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/autoresearch/{tag}", check=False):
        specs.append(f"+refs/heads/autoresearch/{tag}:refs/heads/autoresearch/{tag}")
    error = bounded_git(repo, ["push", "--quiet", "hub", *specs], timeout)
    if error:
        return f"warning: hub unreachable ({error}); logged locally, the next Log pushes it"
    return None


def fetch(repo=".", timeout=HUB_TIMEOUT):
    """Fetch every agent's log (and so their experiment commits) from `hub`; None or a warning."""
    if not has_hub(repo):
        return None
    error = bounded_git(repo, ["fetch", "--quiet", "hub", f"+{LOCAL}*:{HUB}*"], timeout)
    if error:
        return f"warning: hub unreachable ({error}); the board shows what was fetched before"
    return None


def number(value, low, high, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} is not a finite number")
    if not low <= value < high:
        raise ValueError(f"{name} {value} is out of range")
    return float(value)


def label(value, name, limit=MAX_LABEL):
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise ValueError(f"{name} is not a short printable string")
    return value


def validate(obj, tag):
    """A clean copy of one untrusted entry, or ValueError saying what is wrong with it."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("commit", "val_bpb", "memory_gb", "status", "description", "agent", "time")
               if k not in obj]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if not isinstance(obj["commit"], str) or not SHA.fullmatch(obj["commit"]):
        raise ValueError("commit is not 40 hex digits")
    if obj["status"] not in STATUSES:
        raise ValueError("status is not keep, discard or crash")
    if obj["agent"] != tag:
        raise ValueError(f"agent {str(obj['agent'])[:40]!r} in the log of {tag}")
    crash = obj["status"] == "crash"
    entry = {"commit": obj["commit"], "val_bpb": number(obj["val_bpb"], 0 if crash else MIN_BPB, 20, "val_bpb"),
             "memory_gb": number(obj["memory_gb"], 0, 1e4, "memory_gb"), "status": obj["status"],
             "description": label(obj["description"], "description", MAX_DESCRIPTION), "agent": tag}
    for key in ("setup", "device", "judge"):
        entry[key] = label(obj.get(key, ""), key)
    steps, seconds = obj.get("num_steps"), obj.get("training_seconds")
    entry["num_steps"] = None if steps is None else int(number(steps, 0, 1e12, "num_steps"))
    entry["training_seconds"] = None if seconds is None else number(seconds, 0, 1e7, "training_seconds")
    entry["time"] = number(obj["time"], 0, 1e11, "time")
    return entry


def parse_log(data, tag):
    """Valid entries of one log blob, and how many lines were skipped."""
    entries, bad = [], 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError("line too long")
            entries.append(validate(json.loads(raw.decode("utf-8")), tag))
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            bad += 1
    return entries, bad


def read_blobs(repo, names, limit=MAX_LOG_BYTES):
    """{name: bytes, or a reason it was skipped} for `<rev>:<path>` names, with one cat-file
    process for the sizes and one for the contents, whatever the number of agents."""
    if not names:
        return {}
    out, found = {}, []
    checks = git(repo, "cat-file", "--batch-check", input="".join(n + "\n" for n in names).encode())
    for name, line in zip(names, checks.decode(errors="replace").splitlines()):
        fields = line.split()
        if len(fields) != 3 or fields[1] != "blob":
            out[name] = "log.jsonl is missing or not a file"
        elif int(fields[2]) > limit:
            out[name] = f"log.jsonl is {int(fields[2]) >> 20} MB, over the {limit >> 20} MB cap"
        else:
            found.append(name)
    data = git(repo, "cat-file", "--batch", input="".join(n + "\n" for n in found).encode()) if found else b""
    pos = 0
    for name in found:
        end = data.index(b"\n", pos)
        size = int(data[pos:end].split()[2])
        out[name] = data[end + 1:end + 1 + size]
        pos = end + 2 + size  # the content is followed by a newline
    return out


def read_record(repo=".", own=None):
    """Every agent's entries from local logs (worktrees of one clone share them) and the hub's
    fetched logs, and one warning line per log with skipped entries. For an agent in both, our
    own local log wins (it may hold unpushed entries); for others, the one with more entries."""
    own = own or agent_tag(repo)
    refs = git(repo, "for-each-ref", "--format=%(objectname) %(refname)", LOCAL, HUB).decode().splitlines()
    tips, warnings = [], []
    for line in refs:
        sha, ref = line.split(" ", 1)
        where, tag = ("local", ref[len(LOCAL):]) if ref.startswith(LOCAL) else ("hub", ref[len(HUB):])
        if TAG.fullmatch(tag):
            tips.append((where, tag, sha))
        else:
            warnings.append(f"warning: skipped a {where} log with an odd agent name {tag[:40]!r}")
    blobs = read_blobs(repo, [f"{sha}:log.jsonl" for _, _, sha in tips])
    chosen = {}
    for where, tag, sha in tips:
        data = blobs[f"{sha}:log.jsonl"]
        entries, bad = parse_log(data, tag) if isinstance(data, bytes) else ([], data)
        best = chosen.get(tag)
        if best is None or (where == "local" if tag == own else len(entries) > len(best[1])):
            chosen[tag] = (where, entries, bad)
    for tag in sorted(chosen):
        where, _, bad = chosen[tag]
        if isinstance(bad, str):
            warnings.append(f"warning: {where} log of agent {tag}: {bad}; skipped")
        elif bad:
            warnings.append(f"warning: {where} log of agent {tag}: {bad} malformed entries skipped")
    return [e for tag in sorted(chosen) for e in chosen[tag][1]], warnings
