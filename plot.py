"""
Look at runs: the loss curves of all of them on one figure, and per run how each matrix's alpha moved.

    python plot.py out/tiny-adamw out/tiny-adamw-llr                  # -> plot.png
    python plot.py out/tiny-adamw out/tiny-adamw-llr --out=runs.pdf   # the extension picks the format

Top: validation loss (dots) and smoothed training loss (thin line) against tokens seen, one colour per run.
Below, one row per run: a heatmap of the Hill alpha of every weight matrix (rows, in model order) at each
evaluation (columns), and beside it the LLR / LANTON multipliers where the run has them. Everything comes
from the runs' metrics.jsonl. Needs matplotlib (an optional extra: pip install matplotlib). The drawing
functions take matplotlib axes and plain records, so other scripts can draw with them.
"""

import json
import math
import os
import sys

from prepare_fineweb import Parser, UsageError  # the project's one-line errors (numpy and tiktoken, no torch)

# ---- reading a run ----


def load_run(run_dir):
    """A run's metrics.jsonl as {"name", "tokens_per_step", "train": [(step, loss)], "val": [(step, loss)],
    "alphas": [eval records], "llr": [records], "lanton": [records]}. A resumed run logs again the steps after
    its last checkpoint; the later record of a step wins."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist; pass directories of runs made by train.py")
    header, train, evals, methods = None, {}, {}, {"llr": {}, "lanton": {}}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "config" in r:
                header = header or r  # a resume appends another header; the first one describes the run
            elif "method" in r:
                methods.setdefault(r["method"], {})[r["step"]] = r
            elif "val_loss" in r:
                evals[r["step"]] = r
            elif "loss" in r:
                train[r["step"]] = r["loss"]
    if header is None:
        raise UsageError(f"{path} has no header record; is it a train.py run?")
    cfg = header["config"]
    per_step = cfg["total_batch_tokens"] or cfg["batch_size"] * cfg["seq_len"] * header.get("world_size", 1)
    ordered = lambda d: [d[s] for s in sorted(d)]
    return {"name": os.path.basename(os.path.normpath(run_dir)), "tokens_per_step": per_step,
            "train": sorted(train.items()), "val": [(r["step"], r["val_loss"]) for r in ordered(evals)],
            "alphas": [r for r in ordered(evals) if "alphas" in r],
            **{m: ordered(rs) for m, rs in methods.items()}}


def smooth(values, beta=0.9):
    """Exponential moving average, bias-corrected so the first points are not pulled towards 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def short(name):  # layers.3.self_attn.q_proj.weight -> 3.q_proj
    for noise in ("layers.", ".weight", "self_attn.", "mlp.", "model.", "transformer."):
        name = name.replace(noise, "")
    return name

# ---- drawing on given axes ----


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def draw_losses(ax, runs):
    """Validation loss (dots) and smoothed training loss (thin line) of every run against tokens."""
    for i, run in enumerate(runs):
        k, color = run["tokens_per_step"], f"C{i}"
        if run["train"]:
            steps, losses = zip(*run["train"])
            ax.plot([s * k for s in steps], smooth(losses), color=color, lw=0.8, alpha=0.6)
        if run["val"]:
            steps, losses = zip(*run["val"])
            ax.plot([s * k for s in steps], losses, "o-", color=color, ms=3, label=run["name"])
    ax.set(xlabel="tokens", ylabel="loss (dots: validation, line: training, smoothed)")
    ax.legend(fontsize=8)


def draw_heatmap(ax, records, key, names, title, cmap="viridis", **imshow):
    """record[key][name] for every name (rows) and record (columns, labelled by step); missing or null
    values (a degenerate spectrum, a layer a method leaves alone) stay blank. Returns the image."""
    grid = [[(r[key].get(n) if r[key].get(n) is not None else math.nan) for r in records] for n in names]
    im = ax.imshow(grid, aspect="auto", cmap=cmap, interpolation="nearest", **imshow)
    cols = range(0, len(records), max(1, math.ceil(len(records) / 8)))  # at most ~8 step labels
    ax.set_xticks(list(cols), [records[i]["step"] for i in cols])
    rows = range(0, len(names), max(1, math.ceil(len(names) / 60)))  # at most ~60 row labels
    ax.set_yticks(list(rows), [short(names[i]) for i in rows], fontsize=5)
    ax.set(title=title, xlabel="step")
    return im


def draw_run(fig, run, alpha_range=(None, None)):
    """One run's alpha heatmap and, beside it, each layerwise method's multipliers, on a (sub)figure.
    alpha_range (vmin, vmax) gives several runs one colour scale."""
    names = list(run["alphas"][0]["alphas"]) if run["alphas"] else []
    panels = [(run["alphas"], "alphas", "alpha", "viridis", dict(zip(("vmin", "vmax"), alpha_range)))]
    panels += [(run[m], "multipliers", f"{m.upper()} multiplier", "magma", {})
               for m in ("llr", "lanton") if run.get(m)]
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (records, key, title, cmap, kw) in zip(axes, panels):
        im = draw_heatmap(ax, records, key, names, f"{run['name']}: {title}", cmap, **kw)
        fig.colorbar(im, ax=ax)


def plot_runs(run_dirs, out):
    plt = pyplot()
    if plt is None:
        raise ImportError("plot.py needs matplotlib: pip install matplotlib")
    runs = [load_run(d) for d in run_dirs]
    with_alphas = [r for r in runs if r["alphas"]]  # runs logged before alphas were: curves only
    heights = [4.0] + [1.5 + 0.09 * len(r["alphas"][0]["alphas"]) for r in with_alphas]
    fig = plt.figure(figsize=(12, sum(heights)), layout="constrained")
    subfigs = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    draw_losses(subfigs[0].subplots(), runs)
    values = [a for r in with_alphas for rec in r["alphas"] for a in rec["alphas"].values() if a is not None]
    for sub, run in zip(subfigs[1:], with_alphas):
        # one alpha scale for all runs
        draw_run(sub, run, (min(values, default=None), max(values, default=None)))
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return [r["name"] for r in runs if not r["alphas"]]

# ---- command line ----


def main(argv=None):
    p = Parser(prog="plot.py", description="Plot loss curves and per-matrix alpha heatmaps of train.py runs.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="directories holding metrics.jsonl (train.py's out_dir)")
    p.add_argument("--out", default="plot.png", metavar="FILE", help="figure file; .png, .pdf, .svg ...")
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        without = plot_runs(args.runs, args.out)
    except UsageError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 1
    if without:
        print(f"no alphas logged in {', '.join(without)} (run before train.py logged them): curves only")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
