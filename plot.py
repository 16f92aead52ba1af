"""
Look at runs: the loss curves of all of them on one figure, and per run how each matrix's alpha moved.

    python plot.py out/tiny-adamw out/tiny-adamw-llr                  # -> plot.png
    python plot.py out/tiny-adamw out/tiny-adamw-llr --out=runs.pdf   # the extension picks the format
    python plot.py --esd out/tiny-adamw-llr                           # -> esd.png: the spectra behind LLR

Top: validation loss (dots) and smoothed training loss (thin line) against tokens seen, one colour per run.
Below, one row per run: a heatmap of the Hill alpha of every weight matrix (rows, in model order) at each
evaluation (columns), and beside it the LLR / LANTON multipliers where the run has them. Everything comes
from the runs' metrics.jsonl. Needs matplotlib (an optional extra: pip install matplotlib). The drawing
functions take matplotlib axes and plain records, so other scripts can draw with them.

With --esd, one run's picture of Heavy-Tailed Self-Regularization: for a few matrices, the eigenvalues of
W^T W on log-log axes at initialisation (rebuilt from the run's seed) and at its last checkpoint, as the
fraction of eigenvalues above each value; xmin (the median) dotted, and the power law the Hill estimator fits
through it, whose slope is 1 - alpha. Below, for an LLR run, the decision LLR took from those alphas at its
first and last recompute: each matrix's alpha against its multiplier, on the line of the linear map.
"""

import json
import math
import os
import sys

from cli import Parser, UsageError  # the project's one-line errors (argparse only, no torch)

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


# ---- the spectrum of a weight matrix, and LLR's decision ----


def middle_matrices(names):
    """The default matrices to draw: one attention and one MLP matrix of the middle block, and the embedding."""
    blocks = sorted({int(n.split(".")[1]) for n in names if n.startswith("layers.")})
    mid = blocks[len(blocks) // 2]
    wanted = [f"layers.{mid}.self_attn.q_proj.weight", f"layers.{mid}.mlp.down_proj.weight", "embed_tokens.weight"]
    return [n for n in wanted if n in names]


def load_spectra(run_dir, matrices=()):
    """(step, {name: {"init": eigs, "final": eigs}}): the eigenvalues of W^T W (llr.esd) of some matrices at
    initialisation, the model rebuilt from the run's seed as train.py builds it, and at the last checkpoint.
    matrices: full or short names (3.q_proj); empty = middle_matrices."""
    import torch

    import llr
    from model import LLaMA, ModelConfig
    path = os.path.join(run_dir, "ckpt.pt")
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist; --esd needs a run directory with a checkpoint")
    ckpt = torch.load(path, map_location="cpu", mmap=True)  # the matrices only are read
    final = {n: w for n, w in ckpt["model"].items() if w.ndim == 2}
    by_short = {short(n): n for n in final}
    names = [by_short.get(m, m) for m in matrices] or middle_matrices(list(final))
    unknown = [m for m in names if m not in final]
    if unknown:
        raise UsageError(f"no matrix {unknown[0]!r} in {path}; choose from {', '.join(list(by_short)[:12])}, ...")
    torch.manual_seed(ckpt["config"]["seed"])  # what train() does before it builds the model
    init = LLaMA(ModelConfig(**ckpt["model_config"])).state_dict()
    return ckpt["step"], {n: {"init": llr.esd(init[n]).tolist(), "final": llr.esd(final[n]).tolist()} for n in names}


def draw_esd(ax, eigs, label, color):
    """One spectrum as its complementary CDF on log-log axes (the fraction of eigenvalues >= each one), xmin
    dotted, and the Hill power law through xmin: a density lambda^-alpha has a CCDF of slope 1 - alpha, and
    the tail (the n = N - i largest, xmin = lambda_i included) is n/N of the spectrum. Returns (alpha, line)."""
    import llr
    lam = sorted(eigs)
    N, i = len(lam), int(len(lam) / 2)  # xmin at the median, as llr.hill_alpha's default xmin_pos = 2
    alpha, xmin = llr.hill_alpha(lam), lam[i]
    ax.loglog(lam, [(N - k) / N for k in range(N)], ".", ms=3, color=color, alpha=0.6)
    xs = [xmin, lam[-1]]
    (line,) = ax.loglog(xs, [(N - i) / N * (x / xmin) ** (1 - alpha) for x in xs], "-", color=color, lw=1.5,
                        label=f"{label}: alpha {alpha:.2f}")
    ax.axvline(xmin, ls=":", color=color, lw=0.8)
    return alpha, line


def draw_decision(ax, record, r_min, r_max):
    """LLR's decision at one recompute: every matrix's alpha against the multiplier it was given, by layer
    type; the block matrices lie on the linear map from (alpha_min, r_min) to (alpha_max, r_max), embedding
    and head sit at r_max (or 1) whatever their alpha."""
    from common import LAYER_TYPES
    points = {}
    for name, m in record["multipliers"].items():
        kind = next((k for k, key in LAYER_TYPES if key in name), "other")
        points.setdefault(kind, []).append((record["alphas"][name], m))
    block = [a for kind, ps in points.items() if kind not in ("embed", "head") for a, _ in ps]
    ax.plot([min(block), max(block)], [r_min, r_max], "-", color="0.7", lw=1, label="linear map")
    colors = {k: f"C{j}" for j, (k, _) in enumerate(LAYER_TYPES)}  # one colour per layer type in every panel
    for kind, ps in points.items():
        ax.plot(*zip(*ps), "o" if kind not in ("embed", "head") else "s", color=colors.get(kind, "k"), ms=5,
                label=kind)
    ax.set(xlabel="alpha (heavier tail <- -> lighter tail)", ylabel="LR multiplier",
           title=f"LLR's decision at step {record['step']}")
    ax.legend(fontsize=7, ncol=2)


def plot_esd(run_dir, out, matrices=()):
    """The --esd figure; returns {name: (alpha at init, alpha at the checkpoint)}."""
    plt = pyplot()
    if plt is None:
        raise ImportError("plot.py needs matplotlib: pip install matplotlib")
    step, spectra = load_spectra(run_dir, matrices)
    run = load_run(run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        llr_cfg = json.loads(f.readline())["config"]["llr_config"]
    recomputes = run["llr"][:1] + run["llr"][1:][-1:]  # the first and the last
    rows = 2 if recomputes else 1
    fig = plt.figure(figsize=(4 * max(len(spectra), 2), 3.6 * rows), layout="constrained")
    top, *bottom = fig.subfigures(rows, 1, squeeze=False)[:, 0]
    fitted = {}
    for ax, (name, eigs) in zip(top.subplots(1, len(spectra), squeeze=False)[0], spectra.items()):
        a0, _ = draw_esd(ax, eigs["init"], "init", "C0")
        a1, _ = draw_esd(ax, eigs["final"], f"step {step}", "C3")
        fitted[name] = (a0, a1)
        ax.set(title=short(name), xlabel="eigenvalue of W^T W", ylabel="fraction of eigenvalues >= x")
        ax.legend(fontsize=8)
    top.suptitle(f"{run['name']}: spectra at initialisation and at step {step}")
    if recomputes:
        for ax, record in zip(bottom[0].subplots(1, len(recomputes), squeeze=False)[0], recomputes):
            draw_decision(ax, record, llr_cfg["r_min"], llr_cfg["r_max"])
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return fitted


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
    p.add_argument("--out", default="", metavar="FILE",
                   help="figure file; .png, .pdf, .svg ... (default: plot.png, or esd.png with --esd)")
    p.add_argument("--esd", action="store_true", help="the spectra of one run's matrices, and LLR's decision")
    p.add_argument("--matrices", default="", metavar="NAMES",
                   help="with --esd: comma-separated matrices, e.g. 2.q_proj,2.up_proj,lm_head (default: "
                        "an attention and an MLP matrix of the middle block, and the embedding)")
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        args.out = args.out or ("esd.png" if args.esd else "plot.png")
        if args.esd:
            if len(args.runs) != 1:
                raise UsageError("--esd draws one run; pass one RUN_DIR")
            for name, (a0, a1) in plot_esd(args.runs[0], args.out, [m for m in args.matrices.split(",") if m]).items():
                print(f"{short(name)}: alpha {a0:.2f} at init, {a1:.2f} at the checkpoint")
            print(f"wrote {args.out}")
            return 0
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
