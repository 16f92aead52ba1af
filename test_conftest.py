"""
Tests of conftest.py, the harness the other tests run in: deadlines, child processes, the DDP runner, and the
CUDA tests' skip.

    python -m pytest -q test_conftest.py
"""

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import run, run_ddp, started

HERE = os.path.dirname(os.path.abspath(__file__))


def test_a_hung_test_ends_the_run_at_its_deadline(tmp_path):
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path)
    (tmp_path / "test_hang.py").write_text(textwrap.dedent("""
        import time, pytest

        @pytest.mark.deadline(3)
        def test_hang():
            time.sleep(600)
    """))
    t0 = time.monotonic()
    r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_hang.py"], 120, cwd=tmp_path)
    assert r.returncode == 1 and time.monotonic() - t0 < 60
    assert "test_hang.py::test_hang ran past its deadline of 3s" in r.stderr
    assert 'line 6 in test_hang' in r.stderr  # where it was stuck


def _stuck_or_failing_rank(rank, world, how):
    import torch.distributed as dist
    if rank == 1:
        if how == "hang":
            time.sleep(600)
        raise SystemExit(3)
    dist.barrier()  # rank 0 waits for its peer here, as in a real collective


@pytest.mark.parametrize("how", ["hang", "fail"])
def test_ddp_harness_kills_ranks_at_a_failure_or_the_deadline(how):
    """A failing rank ends the test at once (not when gloo gives up on its peer), a hung one at the
    deadline, and no rank is left running."""
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="DDP ranks exited with") as e:
        run_ddp(_stuck_or_failing_rank, how, timeout=15 if how == "hang" else 120)
    assert time.monotonic() - t0 < 60
    assert ("-9]" if how == "hang" else "3]") in str(e.value)  # rank 1 killed at the deadline, or its own status
    assert multiprocessing.active_children() == []


def test_started_kills_what_its_child_started_in_a_session_of_its_own():
    """As torchrun starts its ranks: a hung torchrun test must not leave them running."""
    code = ("import subprocess, time; p = subprocess.Popen(['sleep', '300'], start_new_session=True); "
            "print(p.pid, flush=True); time.sleep(300)")
    with started([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        pid = int(proc.stdout.readline())
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # dead, not yet reaped
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the grandchild outlived the block")


def test_without_a_gpu_the_gpu_tests_skip_and_say_why(tmp_path):
    """python -m pytest -q -k cuda where torch sees no GPU (hidden here, whatever this machine has): the tests that
    take the `cuda` fixture are skipped, not failed, and the console says why, under -q too."""
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path)
    (tmp_path / "test_gpu.py").write_text(textwrap.dedent("""
        def test_cuda_one(cuda):
            assert False

        def test_cuda_two(cuda):
            assert False

        def test_elsewhere():
            assert False
    """))
    r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "test_gpu.py"], 120,
            cwd=tmp_path, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0 and "2 skipped, 1 deselected" in r.stdout, r.stdout
    assert "2 CUDA tests skipped: needs a CUDA GPU (torch sees none)" in r.stdout, r.stdout
