"""
Tests of plot.py: a PNG of a uniform run and an LLR run made here; the heatmap holds the logged alphas.

    python -m pytest -q test_plot.py
"""

import json

import pytest

import plot
import train as T


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A uniform AdamW run and an LLR run, 12 steps each, evaluated every 4; returns their out_dirs."""
    tmp = tmp_path_factory.mktemp("runs")
    T.build_embedded_corpus(str(tmp / "pydoc"))
    base = T.TrainConfig(data=str(tmp / "pydoc"), max_steps=12, batch_size=4, seq_len=32, eval_interval=4, eval_steps=1,
                         sample_tokens=0, llr_config=T.LLRConfig(interval=2))
    T.train(T.dataclasses.replace(base, out_dir=str(tmp / "uniform")))
    T.train(T.dataclasses.replace(base, out_dir=str(tmp / "llr"), llr=True))
    return str(tmp / "uniform"), str(tmp / "llr")


def test_writes_a_png_of_both_runs(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "runs.png"
    assert plot.main([*runs, f"--out={out}"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert f"wrote {out}" in capsys.readouterr().out


def test_heatmap_shows_the_logged_alphas_and_multipliers(runs):
    plt = plot.pyplot() or pytest.skip("matplotlib is not installed")
    uniform, llr = plot.load_run(runs[0]), plot.load_run(runs[1])
    assert [s for s, _ in llr["val"]] == [0, 4, 8, 12] and [r["step"] for r in llr["llr"]] == [0, 2]  # window: 20% of 12 steps
    assert uniform["tokens_per_step"] == 4 * 32 and len(uniform["train"]) == 12 and not uniform["llr"]
    fig = plt.figure()
    plot.draw_run(fig, llr)
    alpha_ax, mult_ax = [ax for ax in fig.axes if ax.get_title()]  # the two panels (the others are colour bars)
    names = list(llr["alphas"][0]["alphas"])
    grid = alpha_ax.get_images()[0].get_array()
    assert grid.shape == (len(names), 4)
    assert grid[names.index("layers.2.mlp.up_proj.weight"), 3] == llr["alphas"][3]["alphas"]["layers.2.mlp.up_proj.weight"]
    assert mult_ax.get_images()[0].get_array()[names.index("lm_head.weight"), 0] == 3.0  # LLR: r_max for the head
    plt.close(fig)


def test_resumed_run_and_bad_input(runs, tmp_path, capsys, monkeypatch):
    lines = open(f"{runs[0]}/metrics.jsonl").read().splitlines()
    resumed = tmp_path / "resumed"
    resumed.mkdir()  # as a run that stopped after step 6 and resumed from its step-4 checkpoint logs it
    (resumed / "metrics.jsonl").write_text("\n".join(lines + [l for l in lines if '"loss"' in l and json.loads(l)["step"] in (5, 6)]))
    assert plot.load_run(str(resumed))["train"] == plot.load_run(runs[0])["train"]  # one loss per step
    assert plot.main([str(tmp_path / "none")]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
    monkeypatch.setattr(plot, "pyplot", lambda: None)
    assert plot.main([runs[0]]) == 1
    assert "pip install matplotlib" in capsys.readouterr().err


def test_esd_line_is_the_hill_fit_and_init_is_rebuilt_from_the_seed(runs):
    """The drawn power law has slope 1 - hill_alpha of the spectrum (read back from the line's data); the
    init spectrum is the seed's model; the checkpoint's is the trained one."""
    plt = plot.pyplot() or pytest.skip("matplotlib is not installed")
    torch = pytest.importorskip("torch")
    import math

    import llr
    from model import LLaMA, ModelConfig
    step, spectra = plot.load_spectra(runs[1], ["2.q_proj", "lm_head"])
    ckpt = torch.load(f"{runs[1]}/ckpt.pt")
    torch.manual_seed(ckpt["config"]["seed"])
    init = LLaMA(ModelConfig(**ckpt["model_config"])).state_dict()["lm_head.weight"]
    assert step == 12 and spectra["lm_head.weight"]["init"] == llr.esd(init).tolist()
    assert spectra["lm_head.weight"]["final"] == llr.esd(ckpt["model"]["lm_head.weight"]).tolist()
    fig, ax = plt.subplots()
    for eigs in (spectra["layers.2.self_attn.q_proj.weight"]["final"], [float(k) ** -1.5 for k in range(1, 200)]):
        alpha, line = plot.draw_esd(ax, eigs, "x", "C0")
        (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
        slope = (math.log(y1) - math.log(y0)) / (math.log(x1) - math.log(x0))
        assert alpha == llr.hill_alpha(eigs) and 1 - slope == pytest.approx(alpha, rel=1e-9)
        assert x0 == sorted(eigs)[len(eigs) // 2]  # xmin: the median
    plt.close(fig)


def test_esd_figure_of_an_llr_run_and_a_uniform_one(runs, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    out = tmp_path / "esd.png"
    assert plot.main(["--esd", runs[1], f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "2.q_proj: alpha" in printed and "2.down_proj" in printed and "embed_tokens" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    decisions, real = [], plot.draw_decision
    monkeypatch.setattr(plot, "draw_decision", lambda ax, rec, lo, hi: decisions.append((rec["step"], lo, hi))
                        or real(ax, rec, lo, hi))
    plot.plot_esd(runs[1], str(tmp_path / "again.png"))
    plot.plot_esd(runs[0], str(tmp_path / "uniform.png"))  # no LLR records: spectra only
    assert decisions == [(0, 1.0, 3.0), (2, 1.0, 3.0)]  # the first and the last recompute
    assert plot.main(["--esd", runs[1], "--matrices=9.q_proj"]) == 2
    assert "no matrix '9.q_proj'" in capsys.readouterr().err
    assert plot.main(["--esd", *runs]) == 2


def test_esd_of_a_run_with_one_llr_recompute_draws_that_decision_once(runs, tmp_path, monkeypatch):
    """A run whose LLR recomputed once (a short run, or a long window's single interval): its first recompute is its
    last, and the figure shows it once, not twice."""
    pytest.importorskip("matplotlib")
    import shutil
    one = tmp_path / "one"
    shutil.copytree(runs[1], one)
    lines = (one / "metrics.jsonl").read_text().splitlines(keepends=True)
    llr_lines = [line for line in lines if '"method": "llr"' in line]
    assert len(llr_lines) > 1
    (one / "metrics.jsonl").write_text("".join(line for line in lines if line not in llr_lines[1:]))
    decisions, real = [], plot.draw_decision
    monkeypatch.setattr(plot, "draw_decision", lambda ax, rec, lo, hi: decisions.append(rec["step"])
                        or real(ax, rec, lo, hi))
    plot.plot_esd(str(one), str(tmp_path / "esd.png"), ["2.q_proj"])
    assert decisions == [0]
