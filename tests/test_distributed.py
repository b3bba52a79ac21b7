"""Sharded runs: two CPU processes give the single-process result.json, and a failing rank fails fast."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from odebench.distributed import Single, cpu_launch_hint, shard_range

REPO = Path(__file__).resolve().parents[1]

# One row per teacher: the run arguments of both the single-process and the sharded run. Each has
# >= 2 reference chunks (--ref-batch) and >= 2 sampling batches (--batch-size), so both ranks work
# in every sharded stage, a solver student, a k-step checkpoint student where the domain has one
# (cm samples with k = 1, 2, 4), and the reference oracle. Add a teacher (e.g. the tiny SDXL) by
# adding a row; the DDIM-100 reference of discrete teachers is chunked by 256, so below 257 samples
# rank 0 solves all of it.
CASES = {
    # digits: the floor is one chunk (rank 0's) because tight solves of the UNet are slow; gmm shards it
    "digits": ["--teacher", "digits", "--samples", "32", "--ref-batch", "16", "--batch-size", "16",
               "--student", "ddim:2", "--student", "cm", "--student", "ref",
               "--curve-points", "2", "--curve-samples", "8", "--floor-samples", "16"],
    "gmm": ["--teacher", "gmm", "--samples", "96", "--ref-batch", "32", "--batch-size", "32",
            "--student", "ddim:2", "--student", "heun:3", "--student", "ref",
            "--curve-points", "3", "--curve-samples", "16", "--floor-samples", "40"],
}


def _tiny_sdxl_case(tmp: Path) -> list[str]:
    """The tiny random SDXL (tests/sdxl_tiny.py) with prompts, a direct-cms checkpoint student (LoRA), a
    solver row and the oracle, and FID / FD-DINOv2 on tiny backbones from files (distribution metrics
    need the features of every shard's samples)."""
    import shutil

    from diffusers import UNet2DConditionModel
    from sdxl_tiny import build_tiny_sdxl, write_lcm_lora
    from tiny_backbones import write_tiny_dinov2, write_tiny_inception

    sdxl = build_tiny_sdxl(tmp / "sdxl")
    ckpt = tmp / "paper" / "checkpoint-10"
    write_lcm_lora(UNet2DConditionModel.from_pretrained(str(sdxl / "unet")), tmp / "lora")
    ckpt.mkdir(parents=True)
    shutil.copy(tmp / "lora" / "pytorch_lora_weights.safetensors", ckpt)
    write_tiny_inception(tmp / "inception.pt")
    write_tiny_dinov2(tmp / "dinov2")
    (tmp / "captions.txt").write_text("a red bicycle\na bowl of soup\na lighthouse at dusk\n")
    return ["--teacher", str(sdxl), "--prompts", str(tmp / "captions.txt"), "--samples", "8", "--ref-batch", "4",
            "--batch-size", "4", "--student", "ddim:2", "--student", str(ckpt), "--student", "ref",
            "--rtol", "1e-3", "--atol", "1e-3", "--device", "cpu", "--dtype", "fp32", "--fd-bootstrap", "0",
            "--curve-points", "2", "--curve-samples", "4", "--floor-samples", "4", "--metrics", "fid,fd_dinov2",
            "--fid-weights", str(tmp / "inception.pt"), "--dinov2-weights", str(tmp / "dinov2")]


CASES["sdxl-tiny"] = _tiny_sdxl_case

# result.json fields that may differ between the two runs, and why; everything else must be equal
VOLATILE = {
    ("timings",): "wall-clock seconds",
    ("created",): "wall-clock time stamp",
    ("environment",): "records the launch itself (processes, backend, device, threads)",
    ("reference", "seconds"): "wall-clock seconds of the reference stage",
}


def _free_port() -> int:
    # the launchers default to port 29500; a fixed port collides with any other launch on the machine
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ODEBENCH_CACHE=str(cache), HF_HUB_OFFLINE="1", COLUMNS="250", NO_COLOR="1", TERM="dumb",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("WORLD_SIZE", None)
    return env


def _accelerate_launch(n: int) -> list[str]:
    """`accelerate launch` for n CPU processes. `--cpu` would start ONE process (accelerate 1.x wants
    mpirun for several CPU processes); on a machine without GPUs `--multi_gpu` starts n processes
    through torch's elastic launcher, and odebench picks gloo."""
    pytest.importorskip("accelerate")
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port())]


def _strip(result: dict) -> dict:
    result = json.loads(json.dumps(result))
    for path in VOLATILE:
        node = result
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1])
    return result


def _run(cmd: list[str], cwd: Path, cache: Path, timeout: float = 300, **env) -> tuple[subprocess.CompletedProcess, float]:
    cwd.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env={**_env(cache), **env}, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


@pytest.mark.skipif(torch.cuda.is_available(), reason="--multi_gpu would launch on the GPUs; this checks CPU processes")
@pytest.mark.parametrize("teacher", sorted(CASES))
def test_two_processes_equal_one(teacher, tmp_path):
    case = CASES[teacher]
    args = ["run", *(case(tmp_path / "inputs") if callable(case) else case), "--out", "runs"]
    one, t_one = _run([sys.executable, "-m", "odebench", *args], tmp_path / "one", tmp_path / "cache-one")
    assert one.returncode == 0, one.stderr
    two, t_two = _run([*_accelerate_launch(2), "-m", "odebench", *args], tmp_path / "two", tmp_path / "cache-two")
    assert two.returncode == 0, two.stderr
    assert "Traceback" not in two.stderr
    print(f"{teacher}: 1 process {t_one:.1f} s, 2 processes {t_two:.1f} s")

    # rank 0 alone prints the table and writes the runs (same relative --out, so `command` is equal too)
    assert two.stdout.count("results: ") == 1
    runs_one, runs_two = tmp_path / "one" / "runs", tmp_path / "two" / "runs"
    names = sorted(p.name for p in runs_one.iterdir())
    assert sorted(p.name for p in runs_two.iterdir()) == names  # no temp dirs left by any rank
    for name in names:
        a, b = (json.loads((r / name / "result.json").read_text()) for r in (runs_one, runs_two))
        assert b["environment"]["processes"] == 2 and b["environment"]["backend"] == "gloo"
        # metrics bitwise (json floats round-trip exactly); NFE accounting and cache counters summed over
        # ranks: both caches started empty and each chunk is solved by exactly one rank
        assert _strip(b) == _strip(a), name
        ta, tb = (load_file(str(r / name / "per_sample.safetensors")) for r in (runs_one, runs_two))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k)
    # the shards solved the single-process chunks: the same cache entries, so the cache is shared
    entries = lambda c: sorted(p.name for p in (c / "trajectories").glob("*/*.safetensors"))  # noqa: E731
    assert entries(tmp_path / "cache-two") == entries(tmp_path / "cache-one") != []


FAIL_SCRIPT = """
import os, sys
import odebench.ode.trajectories as trajectories
from odebench.errors import OdebenchError

real = trajectories.reference_set

def reference_set(*args, **kwargs):  # rank 1 fails in its reference shard
    if os.environ["RANK"] == "1":
        if os.environ["HOW"] == "die":
            os._exit(3)
        raise OdebenchError("injected failure on this rank")
    return real(*args, **kwargs)

trajectories.reference_set = reference_set
from odebench.cli import main
sys.argv = ["odebench", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("how", ["raise", "die", "bad-input"])
def test_failing_rank_fails_fast(how, tmp_path):
    """A rank that raises: every rank stops at the stage's end, rank 0 prints one line. A rank that
    dies outright: the launcher stops the rest. Bad input fails every rank alike; rank 0 says it once.
    Nothing hangs and nothing is written."""
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent(FAIL_SCRIPT))
    args = ["--teacher", "no-such-teacher"] if how == "bad-input" else CASES["gmm"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), "run", *args, "--out", "runs"]
    proc, seconds = _run(cmd, tmp_path / "w", tmp_path / "cache", timeout=180, HOW=how)
    assert proc.returncode != 0
    assert not (tmp_path / "w" / "runs").exists() or not any((tmp_path / "w" / "runs").iterdir())
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    if how == "raise":
        # our processes print one line (the launcher adds its own failure report after it)
        assert ours == ["error: rank 1: injected failure on this rank"], proc.stderr
    elif how == "bad-input":
        assert len(ours) == 1 and "no-such-teacher" in ours[0] and "rank" not in ours[0], proc.stderr
    else:
        assert ours == [], proc.stderr
    assert seconds < 120


def test_shard_range_covers_whole_batches_in_rank_order():
    for n in (1, 5, 16, 17, 64, 100):
        for batch in (1, 4, 16, 256):
            for world in (1, 2, 3, 8):
                shards = [shard_range(n, batch, r, world) for r in range(world)]
                assert [i for s in shards for i in s] == list(range(n))  # contiguous, in rank order
                for s in filter(len, shards):
                    assert s.start % batch == 0 and (s.stop % batch == 0 or s.stop == n)
                assert 0 in shards[0]  # rank 0 holds chunk 0 (the error-curve states)
                sizes = [-(-len(s) // batch) for s in shards]
                assert max(sizes) - min(sizes) <= 1  # balanced in whole batches


def test_single_process_imports_no_distributed_machinery():
    code = ("import sys; from odebench.distributed import current, Single; d = current(); "
            "assert type(d) is Single and d.run(lambda idx: idx, 5, 2) == [range(0, 5)]; "
            "assert 'accelerate' not in sys.modules, 'accelerate imported by a single process'")
    env = _env(Path("unused"))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert Single().run(lambda idx: 1, 0, 4) == []


def test_cpu_launch_hint(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert cpu_launch_hint() is None
    # what `accelerate launch --cpu --num_processes 2` exports to the one process it starts
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert "--multi_gpu" in cpu_launch_hint()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cpu_launch_hint() is None
