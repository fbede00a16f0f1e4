"""progress.png: each log's runs as dots (kept ones green, with their descriptions), the running best
as a staircase from the baseline's bar, and Confirm's test_bpb beside the values it confirmed.
Reporting only: nothing here decides a result."""

import math
import os
import statistics

from harness.cache import read_json
from harness.confirm import confirmation_path
from harness.results import STATUSES, bar_lowerings

MAX_LABELS = 20  # at most this many kept runs get a description on the chart


def shorten(text, width):
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


GREEN, GREY = "#1a9850", "#9a9a9a"


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


def staircase(rows, base):
    """The running best as step points: the baseline's bar from its first run, each kept run that
    lowered it, and on to just past the last experiment."""
    steps = bar_lowerings(rows, base["val_bpb"])
    xs = [base["indices"][0]] + [r["index"] for r in steps] + [rows[-1]["index"] + 0.5]
    ys = [base["val_bpb"]] + [r["val_bpb"] for r in steps]
    return xs, ys + ys[-1:]


def finish_chart(fig, ax, xlabel, png_path):
    ax.set_xlabel(xlabel, fontsize=12)
    ax.set_ylabel("validation bits per byte (lower is better)", fontsize=12)
    ax.grid(True, color="0.92", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper right", fontsize=10, facecolor="white", edgecolor="none", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(png_path, bbox_inches="tight")  # room for labels running past the right edge


def chart_title(summaries):
    e = {s: sum(x["experiments"][s] for x in summaries) for s in STATUSES}
    n, setups = sum(e.values()), {x["setup"] for x in summaries} - {None}
    where = f" in {len(summaries)} logs" if len(summaries) > 1 else ""
    return (f"autoresearch{' (' + ', '.join(sorted(setups)) + ')' if setups else ''}: {n} experiment"
            f"{'s' * (n != 1)}{where}, {e['keep']} kept, {e['discard']} discarded, {e['crash']} crashed")


def draw_log(ax, rows, base, high, color, name=None):
    """One log: discarded runs as faint dots (those above the range as markers on the top edge), kept
    ones (and the baseline's) as dots, the running best from Decide's bar as a staircase. `name`:
    one series of several, labelled only by its staircase."""
    from matplotlib.transforms import blended_transform_factory
    one = name is None
    faint = dict(color=GREY if one else color, alpha=0.45 if one else 0.25, linewidths=0, zorder=2, s=22)
    disc = [r for r in rows if r["status"] == "discard" and r["index"] not in base["indices"]]
    inside, above = [r for r in disc if r["val_bpb"] <= high], [r for r in disc if r["val_bpb"] > high]
    ax.scatter([r["index"] for r in inside], [r["val_bpb"] for r in inside], label="discarded" if one else None, **faint)
    if above:  # x in data, y in axes units
        ax.scatter([r["index"] for r in above], [0.985] * len(above), marker="^", clip_on=False, **faint,
                   transform=blended_transform_factory(ax.transData, ax.transAxes),
                   label="discarded, off the chart" if one else None)
    kept = [r for r in rows if r["status"] == "keep" or r["index"] in base["indices"]]
    ax.scatter([r["index"] for r in kept], [r["val_bpb"] for r in kept], s=55, color=color,
               edgecolors="white", linewidths=0.8, zorder=4, label="kept" if one else None)
    xs, ys = staircase(rows, base)
    ax.step(xs, ys, where="post", color=color, linewidth=2.0, alpha=0.85, zorder=3, label=name or "best so far")
    return xs, ys


def draw_reruns(ax, points, low, high):
    """The incumbent's runs beside each experiment (x, val_bpb), as the keep rule asked for them: an
    unchanged commit measured through the night, so the machine's drift is there to see."""
    inside = [(x, y) for x, y in points if low <= y <= high]
    if inside:
        ax.scatter(*zip(*inside), marker="x", s=28, color="0.35", linewidths=1.2, zorder=3,
                   label="the incumbent, run again beside an experiment")


def draw_details(ax, rows, summary, xs, ys, low, high, png_path):
    """What only a one-log chart shows: crashes, the noise band, Confirm's test_bpb, descriptions."""
    from matplotlib.transforms import blended_transform_factory
    crashes, noise = [r for r in rows if r["status"] == "crash"], summary["baseline"]["noise"]
    if crashes:
        ax.scatter([r["index"] for r in crashes], [0.015] * len(crashes), s=18, marker="x", color="#d73027",
                   transform=blended_transform_factory(ax.transData, ax.transAxes), alpha=0.6, linewidths=1.0,
                   zorder=2, label="crashed")
    if noise is not None:
        ax.fill_between(xs, [y - noise for y in ys], [y + noise for y in ys], step="post", color=GREEN,
                        alpha=0.12, linewidth=0, zorder=1, label=f"± the baseline's noise ({noise:.4f})")
    confirmed = read_json(confirmation_path(png_path)) or {}  # Confirm's test_bpb beside the val_bpb it confirms
    marks = [confirmed[side] for side in ("baseline", "best") if (confirmed.get(side) or {}).get("test_bpb")]
    if marks:  # widen the range to fit them
        pad = 0.04 * (high - low)
        low, high = min([low] + [m["test_bpb"] - pad for m in marks]), max([high] + [m["test_bpb"] + pad for m in marks])
        ax.set_ylim(low, high)
    for i, m in enumerate(marks):
        ax.scatter([m["index"]], [m["test_bpb"]], s=70, marker="D", color="#4575b4", edgecolors="white",
                   zorder=5, label=None if i else "test_bpb (--confirm)")
    draw_labels(ax, rows, summary, low, high)


def draw_labels(ax, rows, summary, low, high):
    """The kept runs' descriptions (on a crowded chart only the baseline's and the biggest gains)."""
    from matplotlib.patheffects import withStroke
    base = summary["baseline"]
    kept = [r for r in rows if r["status"] == "keep" or r["index"] in base["indices"]]
    if len(kept) > MAX_LABELS:
        wanted = set(base["indices"]) | {r["index"] for r in summary["ranked"][: MAX_LABELS - 2]}
        kept = [r for r in kept if r["index"] in wanted]
    for r in kept:
        if low <= r["val_bpb"] <= high:
            ax.annotate(shorten(r["description"] or r["commit"], 38), (r["index"], r["val_bpb"]),
                        xytext=(5, 5), textcoords="offset points", rotation=28, fontsize=8,
                        color="#1b4d2e", ha="left", va="bottom", rotation_mode="anchor", zorder=5,
                        annotation_clip=True, path_effects=[withStroke(linewidth=3, foreground="white")])


def subtitle(summary):
    base, best, imp = summary["baseline"], summary["best"], summary["improvement"]
    text = (f"val_bpb {base['val_bpb']:.4f} (the baseline) → {best['val_bpb']:.4f}  (−{imp['absolute']:.4f}, "
            f"{imp['relative']:.2%} better)" if imp["absolute"] > 0
            else f"val_bpb {base['val_bpb']:.4f} (the baseline), no improvement on it yet")
    return text + ("; smoke: these numbers only prove that the loop runs" if summary["setup"] == "smoke" else "")


def plot(logs, png_path):
    """progress.png for [(path, rows, summary)], a series per log; one log also gets its details."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(14, 7), dpi=120)
    ax.set_title(chart_title([s for _, _, s in logs]), fontsize=15, loc="left", pad=24)
    drawn = [(p, r, s) for p, r, s in logs if s["baseline"]]
    if not drawn:
        ax.text(0.5, 0.5, "no completed runs yet", transform=ax.transAxes, ha="center", va="center",
                fontsize=18, color="0.4")
        ax.axis("off")
        fig.savefig(png_path, bbox_inches="tight")
        return plt.close(fig)
    vals = [r for _, rows, _ in drawn for r in rows if r["status"] != "crash"]
    vals += [{"status": "keep", "val_bpb": y} for _, _, s in drawn for _, y in s.get("incumbent_runs") or []]
    low, high = y_limits(vals, max(s["baseline"]["val_bpb"] for _, _, s in drawn))
    n = max(rows[-1]["index"] for _, rows, _ in drawn)
    ax.set_xlim(0.3, n + 0.7 + 0.02 * n)
    ax.set_ylim(low, high)
    colors = plt.get_cmap("tab10").colors
    for i, (path, rows, summary) in enumerate(logs):
        name = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
        base, color = summary["baseline"], GREEN if len(logs) == 1 else colors[i % len(colors)]
        if base is None:
            ax.plot([], [], color=color, label=f"{name}: no completed run")
        elif len(logs) > 1:
            draw_log(ax, rows, base, high, color, f"{name}: {base['val_bpb']:.4f} → {summary['best']['val_bpb']:.4f}")
        else:
            draw_details(ax, rows, summary, *draw_log(ax, rows, base, high, color), low, high, png_path)
            draw_reruns(ax, summary.get("incumbent_runs") or [], low, high)
            ax.text(0, 1.015, subtitle(summary), transform=ax.transAxes, fontsize=11, color="0.3", va="bottom")
    finish_chart(fig, ax, "experiment #" + (" (per log)" if len(logs) > 1 else ""), png_path)
    plt.close(fig)
