"""
Tests of bench.py's own machinery (the benchmark itself runs in miniature in test_train.py's smoke test).

    python -m pytest -q test_bench.py
"""

import pytest

import bench


@pytest.mark.skipif(bench.fcntl is None, reason="no fcntl (Windows): no locks")
def test_a_run_held_by_another_process_is_left_to_it(tmp_path):
    out = str(tmp_path / "out" / "run")
    with bench.claim(out) as first:
        with bench.claim(out) as second:  # another open file: flock conflicts as across processes
            assert first and not second
    with bench.claim(out) as again:  # released when its holder is done
        assert again


def test_without_fcntl_every_claim_succeeds(tmp_path, monkeypatch):  # Windows: one process at a time
    monkeypatch.setattr(bench, "fcntl", None)
    out = str(tmp_path / "out" / "run")
    with bench.claim(out) as first, bench.claim(out) as second:
        assert first and second


def test_steps_to_reach_interpolates_between_evaluations():
    curve = [(0, 3.0), (10, 2.0), (20, 1.0)]
    assert bench.steps_to_reach(curve, 1.5) == 15 and bench.steps_to_reach(curve, 0.5) is None


def test_runs_another_process_holds_are_made_by_it_and_read_last(monkeypatch):
    looks, held = [], {"b": 2}  # "b" is another process's until its third look

    def run_once(cfg, ctx):
        looks.append(cfg)
        if held.get(cfg):
            held[cfg] -= 1
            return None
        return cfg.upper()
    monkeypatch.setattr(bench, "run_once", run_once)
    monkeypatch.setattr(bench, "RETRY", 0)
    assert bench.run_all({1: "a", 2: "b", 3: "c"}, ctx=None) == {1: "A", 2: "B", 3: "C"}
    assert looks == ["a", "b", "c", "b", "b"]


@pytest.mark.deadline(600)  # torch.compile on CPU: about half a minute here
def test_speed_times_the_compiled_step_beside_the_eager_one():
    import argparse
    args = argparse.Namespace(speed_presets=["tiny"], seq_len=16, batch_size=2, compile=1, reps=1, muon_preset="tiny")
    row = bench.speed(args)["tiny"]
    assert row["compiled_tok_s"] > 0 and row["compile_speedup"] == pytest.approx(row["compiled_tok_s"] / row["ours_tok_s"])
