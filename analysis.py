"""Summarise an autoresearch run: read results.tsv, print a summary, draw progress.png.

    uv run analysis.py [results.tsv] [--json] [--no-png]

The log is tab-separated with the header `commit val_bpb memory_gb status description`,
status keep, discard or crash (crashes carry val_bpb 0.000000 and memory_gb 0.0).

Prints the counts by status and the keep rate (kept / all rows), the baseline (the first
row that did not crash), the best kept val_bpb and the improvement over the baseline, and
the kept experiments ranked by their gain over the previous kept one (gain = previous kept
val_bpb - this val_bpb, so positive is better). `--json` prints the same numbers as one JSON
object on stdout instead. Warnings (a missing file aside, which is an error) go to stderr.

progress.png is written next to the log (so `uv run analysis.py runs/a/results.tsv` writes
runs/a/progress.png), with or without --json; `--no-png` skips it.
"""

import argparse
import csv
import json
import math
import os
import statistics
import sys

HEADER = ["commit", "val_bpb", "memory_gb", "status", "description"]
STATUSES = ("keep", "discard", "crash")
MAX_LABELS = 20  # at most this many kept runs get a description on the chart


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


def parse_row(fields):
    """One row of the log as a dict, or raise ValueError saying what is wrong with it."""
    if len(fields) < 4:
        raise ValueError(f"expected 5 tab-separated fields, got {len(fields)}")
    commit, val, mem, status = (f.strip() for f in fields[:4])
    description = " ".join(f.strip() for f in fields[4:])  # a stray tab in the description
    status = status.lower()
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not keep, discard or crash")
    try:
        val_bpb, memory_gb = float(val), float(mem)
    except ValueError:
        raise ValueError(f"val_bpb {val!r} or memory_gb {mem!r} is not a number") from None
    if not (math.isfinite(val_bpb) and math.isfinite(memory_gb)):
        raise ValueError("val_bpb or memory_gb is not finite")
    if status != "crash" and val_bpb <= 0:
        raise ValueError(f"a {status} row needs a positive val_bpb, got {val!r}")
    return {"commit": commit, "val_bpb": val_bpb, "memory_gb": memory_gb,
            "status": status, "description": description}


def read_log(path):
    """Parsed rows (each with its 1-based experiment `index` and file `line`), and the line
    numbers skipped as malformed. Blank lines and the header are ignored silently."""
    rows, skipped = [], []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for lineno, fields in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not any(field.strip() for field in fields):
                continue
            if lineno == 1 and [x.strip().lower() for x in fields[:5]] == HEADER:
                continue
            try:
                row = parse_row(fields)
            except ValueError as e:
                warn(f"{path}:{lineno}: skipped malformed row ({e})")
                skipped.append(lineno)
                continue
            row["index"], row["line"] = len(rows) + 1, lineno
            rows.append(row)
    return rows, skipped


def summarize(rows):
    """The numbers of the summary, as a plain dict (what --json prints)."""
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    total = len(rows)
    done = [r for r in rows if r["status"] != "crash"]
    baseline = done[0] if done else None
    best, ranked = baseline, []
    if baseline is not None:
        prev = baseline["val_bpb"]
        for r in rows:
            if r["status"] != "keep" or r is baseline:
                continue
            ranked.append({**r, "gain": prev - r["val_bpb"]})
            prev = r["val_bpb"]
            if r["val_bpb"] < best["val_bpb"]:
                best = r
        ranked.sort(key=lambda r: -r["gain"])
    improvement = None
    if baseline is not None:
        absolute = baseline["val_bpb"] - best["val_bpb"]
        improvement = {"absolute": absolute, "relative": absolute / baseline["val_bpb"]}
    return {
        "total": total,
        "counts": counts,
        "keep_rate": counts["keep"] / total if total else 0.0,
        "baseline": baseline,
        "best": best,
        "improvement": improvement,
        "ranked": ranked,
    }


def shorten(text, width):
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def format_text(summary, path):
    c, total = summary["counts"], summary["total"]
    out = [f"{path}: {total} experiment{'s' * (total != 1)}: {c['keep']} kept, "
           f"{c['discard']} discarded, {c['crash']} crashed (keep rate {summary['keep_rate']:.0%})"]
    base, best = summary["baseline"], summary["best"]
    if base is None:
        out.append("no completed run yet" + (" (only crashes)" if total else ""))
        return "\n".join(out)
    imp = summary["improvement"]
    out.append(f"baseline  {base['val_bpb']:.6f}  #{base['index']:<3} {base['commit']:<7}  "
               f"{base['description']}")
    out.append(f"best      {best['val_bpb']:.6f}  #{best['index']:<3} {best['commit']:<7}  "
               f"{best['description']}")
    out.append(f"improved  {imp['absolute']:.6f}  ({imp['relative']:.2%} lower than the baseline)")
    if not summary["ranked"]:
        out.append("no kept experiments after the baseline yet")
        return "\n".join(out)
    out.append("")
    out.append("kept experiments, by gain over the previous kept one:")
    out.append(f"  {'rank':>4}  {'#':>3}  {'commit':<7}  {'val_bpb':>8}  {'gain':>9}  description")
    for rank, r in enumerate(summary["ranked"], 1):
        out.append(f"  {rank:>4}  {r['index']:>3}  {r['commit']:<7}  {r['val_bpb']:8.6f}  "
                   f"{r['gain']:+9.6f}  {shorten(r['description'], 70)}")
    return "\n".join(out)


def y_limits(rows, baseline):
    """A y-range that fits every run except outliers far worse than the rest (beyond
    Q3 + 3 IQR), so one diverged run does not flatten the chart."""
    vals = sorted(r["val_bpb"] for r in rows if r["status"] != "crash")
    fence = math.inf
    if len(vals) >= 4:
        q1, _, q3 = statistics.quantiles(vals, n=4)
        fence = q3 + 3 * (q3 - q1)
    top = max([baseline] + [v for v in vals if v <= fence])
    pad = 0.08 * max(top - vals[0], 0.002 * baseline)
    return vals[0] - 1.5 * pad, top + pad


def plot(rows, summary, png_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patheffects import withStroke
    from matplotlib.transforms import blended_transform_factory

    c, total = summary["counts"], summary["total"]
    fig, ax = plt.subplots(figsize=(14, 7), dpi=120)
    title = (f"autoresearch: {total} experiment{'s' * (total != 1)}, {c['keep']} kept, "
             f"{c['discard']} discarded, {c['crash']} crashed")
    base, best = summary["baseline"], summary["best"]
    if base is None:
        ax.set_title(title, fontsize=15, loc="left")
        ax.text(0.5, 0.5, "no completed runs yet", transform=ax.transAxes,
                ha="center", va="center", fontsize=18, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        fig.savefig(png_path, bbox_inches="tight")
        plt.close(fig)
        return

    green, grey = "#1a9850", "#9a9a9a"
    low, high = y_limits(rows, base["val_bpb"])
    n = rows[-1]["index"]
    ax.set_xlim(0.3, n + 0.7 + 0.02 * n)
    ax.set_ylim(low, high)
    edge = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in axes units

    # discarded runs: faint grey; those above the clipped range as small markers on the top edge
    disc = [r for r in rows if r["status"] == "discard"]
    inside = [r for r in disc if r["val_bpb"] <= high]
    above = [r for r in disc if r["val_bpb"] > high]
    ax.scatter([r["index"] for r in inside], [r["val_bpb"] for r in inside], s=22,
               color=grey, alpha=0.45, linewidths=0, zorder=2, label="discarded")
    if above:
        ax.scatter([r["index"] for r in above], [0.985] * len(above), transform=edge, s=22,
                   marker="^", color=grey, alpha=0.45, linewidths=0, zorder=2, clip_on=False,
                   label="discarded, off the chart")

    # crashes: small red crosses along the bottom edge
    crashes = [r for r in rows if r["status"] == "crash"]
    if crashes:
        ax.scatter([r["index"] for r in crashes], [0.015] * len(crashes), transform=edge,
                   s=18, marker="x", color="#d73027", alpha=0.6, linewidths=1.0, zorder=2,
                   label="crashed")

    # the running best, as a staircase from the baseline to the last experiment
    xs, ys = [base["index"]], [base["val_bpb"]]
    for r in rows:
        if r["status"] == "keep" and r["index"] > base["index"] and r["val_bpb"] < ys[-1]:
            xs.append(r["index"])
            ys.append(r["val_bpb"])
    xs.append(n + 0.5)
    ys.append(ys[-1])
    ax.step(xs, ys, where="post", color=green, linewidth=2.0, alpha=0.85, zorder=3,
            label="best so far")

    # kept runs: green dots, labelled with their descriptions
    kept = [r for r in rows if r["status"] == "keep"]
    if base["status"] != "keep":
        kept = [base] + kept
    ax.scatter([r["index"] for r in kept], [r["val_bpb"] for r in kept], s=55, color=green,
               edgecolors="white", linewidths=0.8, zorder=4, label="kept")
    labelled = kept
    if len(kept) > MAX_LABELS:  # a crowded chart: label the baseline and the biggest gains
        gains = summary["ranked"][: MAX_LABELS - 1]  # already sorted by gain
        wanted = {base["index"]} | {r["index"] for r in gains}
        labelled = [r for r in kept if r["index"] in wanted]
    for r in labelled:
        if not low <= r["val_bpb"] <= high:
            continue
        ax.annotate(shorten(r["description"] or r["commit"], 38), (r["index"], r["val_bpb"]),
                    xytext=(5, 5), textcoords="offset points", rotation=28, fontsize=8,
                    color="#1b4d2e", ha="left", va="bottom", rotation_mode="anchor", zorder=5,
                    annotation_clip=True,
                    path_effects=[withStroke(linewidth=3, foreground="white")])

    imp = summary["improvement"]
    ax.set_title(title, fontsize=15, loc="left", pad=24)
    if imp["absolute"] > 0:
        subtitle = (f"val_bpb {base['val_bpb']:.4f} → {best['val_bpb']:.4f}  "
                    f"(−{imp['absolute']:.4f}, {imp['relative']:.2%} better)")
    else:
        subtitle = f"val_bpb {base['val_bpb']:.4f}, no improvement on the baseline yet"
    ax.text(0, 1.015, subtitle, transform=ax.transAxes, fontsize=11, color="0.3", va="bottom")
    ax.set_xlabel("experiment #", fontsize=12)
    ax.set_ylabel("validation bits per byte (lower is better)", fontsize=12)
    ax.grid(True, color="0.92", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper right", fontsize=10, facecolor="white", edgecolor="none",
              framealpha=0.9)
    fig.tight_layout()
    fig.savefig(png_path, bbox_inches="tight")  # room for labels running past the right edge
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", nargs="?", default="results.tsv", help="the log (default results.tsv)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--no-png", action="store_true", help="don't write progress.png")
    args = ap.parse_args(argv)

    try:
        rows, skipped = read_log(args.log)
    except OSError as e:
        print(f"error: cannot read {args.log}: {e.strerror or e}", file=sys.stderr)
        return 1
    summary = summarize(rows)
    png = None
    if not args.no_png:
        png = os.path.join(os.path.dirname(os.path.abspath(args.log)), "progress.png")
        plot(rows, summary, png)
    if args.json:
        strip = lambda r: r and {k: v for k, v in r.items() if k != "line"}  # noqa: E731
        out = {**summary, "baseline": strip(summary["baseline"]), "best": strip(summary["best"]),
               "ranked": [strip(r) for r in summary["ranked"]],
               "log": args.log, "png": png, "skipped_lines": skipped}
        print(json.dumps(out, indent=2))
    else:
        print(format_text(summary, args.log))
        if png:
            print(f"\nwrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
