"""Board at the night's scale: a hub with 100 agents x 100 experiments (10,000 entries, each log
commit with its experiment commit as second parent), built with git fast-import; then times a
first fetch into a fresh clone, an idle fetch, read_record + board + format_board, and one Log
(record + push) on top, and the whole `analysis.py --board` command. Not collected by pytest;
run: .venv/bin/python tests/bench_board.py"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import board, record  # noqa: E402

AGENTS, EXPERIMENTS = 100, 100
JUDGE = "prepare.py:1111111 analysis.py:2222222 pyproject.toml:3333333"


def data(payload):
    return b"data %d\n%s\n" % (len(payload), payload)


def experiments_stream():
    """Per agent, a chain of 100 small experiment commits on autoresearch/<tag>."""
    out, who = [], b"committer agent <agent@localhost> 1700000000 +0000\n"
    for a in range(AGENTS):
        tag = f"agent{a:03d}".encode()
        for i in range(EXPERIMENTS):
            out += [b"commit refs/heads/autoresearch/%s\n" % tag, b"mark :%d\n" % mark(a, i), who,
                    data(b"experiment %d" % i)]
            if i:
                out.append(b"from :%d\n" % mark(a, i - 1))
            out += [b"M 100644 inline train.py\n", data(b"# %s %d\nlr = %f\n" % (tag, i, 0.01 + i / 1e4))]
    return b"".join(out)


def mark(a, i):
    return 1 + a * EXPERIMENTS + i


def logs_stream(shas):
    """Per agent, its log: each commit holds the whole log so far (as record.record writes it),
    with the experiment commit as second parent. Agents take turns, as they would overnight."""
    out = []
    for a in range(AGENTS):
        tag, lines = f"agent{a:03d}", []
        for i in range(EXPERIMENTS):
            when = 1_700_000_000 + i * 300 + a
            status = "crash" if i % 10 == 9 else ("keep" if i % 3 == 0 else "discard")
            val = 0.0 if status == "crash" else round(1.1 - a / 1000 - i / 2000 + (i % 3) / 100, 6)
            entry = {"commit": shas[mark(a, i)], "val_bpb": val, "memory_gb": 44.2, "status": status,
                     "description": f"{tag} idea {i}: change the schedule and widen the MLP a little",
                     "agent": tag, "setup": "gpt-small", "device": "H100" if a % 4 else "A100",
                     "num_steps": 953, "training_seconds": 300.1, "judge": JUDGE, "time": when}
            lines.append(json.dumps(entry).encode())
            out += [f"commit refs/heads/autoresearch-log/{tag}\n".encode(),
                    b"committer agent <agent@localhost> %d +0000\n" % when,
                    data(f"{tag}: {status} {val:.6f} idea {i}".encode())]
            # no `from`: fast-import chains a branch's commits within one stream
            out += [b"merge %s\n" % shas[mark(a, i)].encode(), b"M 100644 inline log.jsonl\n",
                    data(b"\n".join(lines) + b"\n")]
    return b"".join(out)


def timed(label, fn):
    t0 = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - t0:.2f} s")
    return result


def main():
    tmp = tempfile.mkdtemp(prefix="bench_board_")
    hub, reader = os.path.join(tmp, "hub.git"), os.path.join(tmp, "reader")
    subprocess.run(["git", "init", "--quiet", "--bare", hub], check=True)
    marks = os.path.join(tmp, "marks")
    t0 = time.perf_counter()
    subprocess.run(["git", "-C", hub, "fast-import", "--quiet", f"--export-marks={marks}"],
                   input=experiments_stream(), check=True)
    shas = {int(m[1:]): sha for m, sha in (line.split() for line in open(marks))}
    stream = logs_stream(shas)
    subprocess.run(["git", "-C", hub, "fast-import", "--quiet"], input=stream, check=True)
    print(f"build the hub with fast-import (logs stream {len(stream) >> 20} MB): {time.perf_counter() - t0:.2f} s")
    print("hub size:", subprocess.run(["du", "-sh", hub], capture_output=True, text=True).stdout.split()[0])
    subprocess.run(["git", "init", "--quiet", reader], check=True)
    subprocess.run(["git", "-C", reader, "remote", "add", "hub", hub], check=True)
    assert timed("first fetch into a fresh clone (10,000 log + 10,000 experiment commits)",
                 lambda: record.fetch(reader, timeout=600)) is None
    assert timed("fetch again, nothing new", lambda: record.fetch(reader)) is None
    entries, warnings = timed("read_record", lambda: record.read_record(reader))
    assert len(entries) == AGENTS * EXPERIMENTS and not warnings, (len(entries), warnings[:3])
    b = timed("board", lambda: board.board(entries, JUDGE, "gpt-small", "H100"))
    text = timed("format_board", lambda: board.format_board(b))
    t0 = time.perf_counter()
    board.board(record.read_record(reader)[0], JUDGE, "gpt-small", "H100")
    print(f"read_record + board + format_board at {len(entries)} entries: {time.perf_counter() - t0:.2f} s")
    print(f"--board --json size: {len(json.dumps(b)) >> 10} KB")
    # one more Log by agent000 from a clone of its own: record (101st entry) + push
    own = os.path.join(tmp, "agent000")
    subprocess.run(["git", "clone", "--quiet", "-o", "hub", "-b", "autoresearch/agent000", hub, own], check=True)
    subprocess.run(["git", "-C", own, "fetch", "--quiet", "hub", f"+{record.LOCAL}agent000:{record.LOCAL}agent000"],
                   check=True)
    timed("one Log at 100 entries: record", lambda: record.record(own, "HEAD", 1.0, 44.0, "discard", "one more",
                                                                  judge=JUDGE))
    assert timed("one Log: push", lambda: record.push(own)) is None
    assert timed("fetch after one new entry", lambda: record.fetch(reader)) is None
    analysis = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "analysis.py")
    for flags in ([], ["--json"]):  # the command an agent runs every loop, Python start-up and fetch included
        t0 = time.perf_counter()
        subprocess.run([sys.executable, analysis, "--board", *flags], cwd=reader, check=True, stdout=subprocess.DEVNULL)
        print(f"analysis.py --board {' '.join(flags)}(whole command): {time.perf_counter() - t0:.2f} s")
    print()
    print(text)
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
