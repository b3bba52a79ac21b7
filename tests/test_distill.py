"""The distillation loop: targets against closed forms, training that helps, bitwise resume, clear errors."""
import math

import pytest
import torch

from baselines.distill import DistillConfig, distill_loss
from odebench.ode.paper_grid import grid_for
from baselines.targets import cm_target, direct_target, teacher_step
from baselines.train import train_student
from odebench.bench import RunConfig, run
from odebench.errors import OdebenchError
from odebench.students.mlp import MLPConsistency
from odebench.teachers import load_teacher

MU, S = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), 0.3


def euler_factor(a: float, b: float) -> float:
    """DDIM on N(mu, s^2 I) multiplies (x - mu) by 1 + (b - a) a/(s^2 + a^2) per step a -> b."""
    return 1 + (b - a) * a / (S ** 2 + a ** 2)


def test_direct_target_is_the_closed_form_grid_solution(gaussian_teacher):
    grid = grid_for(gaussian_teacher, 20)
    x = torch.randn(6, 3, dtype=torch.float64) * 5
    n = torch.tensor([0, 3, 7, 19, 19, 12])
    target = direct_target(gaussian_teacher, x, n, grid, None, "ddim")
    sig = [float(s) for s in grid.sigmas]
    for i, ni in enumerate(n.tolist()):
        f = math.prod(euler_factor(sig[m], sig[m + 1]) for m in range(ni, grid.n))
        torch.testing.assert_close(target[i], MU + f * (x[i] - MU), rtol=1e-10, atol=1e-10)


def test_cm_target_is_one_ddim_step_then_the_student(gaussian_teacher):
    grid = grid_for(gaussian_teacher, 10)
    x = torch.randn(5, 3, dtype=torch.float64) * 3
    n = torch.tensor([0, 2, 4, 8, 9])
    seen = {}

    def student(x_next, idx):
        seen["x"], seen["idx"] = x_next, idx
        return 2.0 * x_next + idx[:, None].double()  # any function: the target must just call it

    target = cm_target(student, gaussian_teacher, x, n, grid, None, "ddim")
    sig = grid.sigmas
    expected_next = torch.stack([MU + euler_factor(float(sig[k]), float(sig[k + 1])) * (x[i] - MU) for i, k in enumerate(n.tolist())])
    torch.testing.assert_close(seen["x"], expected_next, rtol=1e-10, atol=1e-10)
    assert seen["idx"].tolist() == (n + 1).tolist()
    torch.testing.assert_close(target, 2.0 * expected_next + (n + 1)[:, None].double())


def test_heun_step_is_second_order(gaussian_teacher):
    x = torch.randn(4, 3, dtype=torch.float64) * 2
    a = torch.full((4,), 2.0, dtype=torch.float64)

    def err(h, solver):
        b = a - h
        exact = MU + (x - MU) * torch.sqrt(S ** 2 + b[:, None] ** 2) / torch.sqrt(S ** 2 + a[:, None] ** 2)
        return float((teacher_step(gaussian_teacher, x, a, b, None, solver) - exact).abs().max())

    assert err(0.1, "heun") / err(0.05, "heun") > 6  # local error ~h^3
    assert 3 < err(0.1, "ddim") / err(0.05, "ddim") < 5  # local error ~h^2
    assert err(0.05, "heun") < err(0.05, "ddim") / 10


def test_discrete_grid_is_the_papers_1_indexed_grid():
    t = load_teacher("digits")
    grid = grid_for(t, 100)
    assert grid.timesteps[:3].tolist() == [1000.0, 990.0, 980.0] and grid.timesteps[-2:].tolist() == [10.0, 0.0]
    assert float(grid.sigmas[0]) == float(t.sigmas[999]) and float(grid.sigmas[-2]) == float(t.sigmas[9]) and grid.sigmas[-1] == 0


def test_losses():
    a, b = torch.tensor([0.0, 3.0]), torch.tensor([1.0, -1.0])
    assert float(distill_loss(a, b, "l2", 0.0)) == pytest.approx((1 + 16) / 2)
    c = 0.5
    assert float(distill_loss(a, b, "huber", c)) == pytest.approx(((1 + c * c) ** 0.5 - c + (16 + c * c) ** 0.5 - c) / 2)


@pytest.mark.parametrize("target", ["cm", "direct"])
def test_training_lowers_loss_and_ode_error(tmp_path, target):
    torch.set_num_threads(1)
    teacher = load_teacher("gmm")
    cfg = DistillConfig(target=target, steps=150, batch_size=128, grid=40, checkpoint_every=150, lr=2e-3)
    side = train_student(cfg, "gmm", tmp_path / "s", hidden=64, depth=2)
    # the same network at initialisation, in the same format
    from odebench.students.consistency import export_mlp_student

    torch.manual_seed(cfg.seed)
    init = MLPConsistency(2, teacher.sigma_data, teacher.sigma_min, hidden=64, depth=2, num_classes=teacher.num_classes)
    init_side = export_mlp_student(tmp_path / "init", init, teacher, conditional=False)
    losses = [float(line.split('"loss": ')[1].split(",")[0]) for line in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 150
    if target == "direct":  # a fixed regression target: the loss must fall
        assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
    # (the CM loss regresses onto the student itself: a near-constant network at initialisation is
    # trivially self-consistent, so that loss can rise while the ODE error falls; the next lines
    # are the test that matters for both targets)
    outs = run(RunConfig(students=(str(side), str(init_side)), samples=256, curve_points=0, floor_samples=0,
                         out=tmp_path / "runs", ksteps=()))
    trained, initial = (o.result["metrics"]["ode_mse@ref"]["value"] for o in outs)
    assert trained < initial


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    full = DistillConfig(target="cm", steps=20, batch_size=32, grid=10, checkpoint_every=10)
    a = train_student(full, "gmm", tmp_path / "a", hidden=32, depth=2)
    half = DistillConfig(target="cm", steps=10, batch_size=32, grid=10, checkpoint_every=10)
    train_student(half, "gmm", tmp_path / "b", hidden=32, depth=2)
    b = train_student(full, "gmm", tmp_path / "b", resume=True, hidden=32, depth=2)
    assert (tmp_path / "a" / "student.safetensors").read_bytes() == (tmp_path / "b" / "student.safetensors").read_bytes()
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a" / "log.jsonl").read_text().count("\n") == (tmp_path / "b" / "log.jsonl").read_text().count("\n") == 20


def test_bad_configs_are_clear_errors(tmp_path):
    for kw, match in [(dict(target="ddpm"), "unknown target"), (dict(target="cm", solver="rk4"), "teacher solver"),
                      (dict(target="cm", loss="l1"), "unknown loss"), (dict(target="cm", steps=0), "--steps")]:
        with pytest.raises(OdebenchError, match=match):
            DistillConfig(**kw).validate()
    with pytest.raises(OdebenchError, match="no training run"):
        train_student(DistillConfig(target="cm", steps=2), "gmm", tmp_path / "none", resume=True)
    train_student(DistillConfig(target="cm", steps=2, batch_size=8, grid=5, checkpoint_every=1), "gmm", tmp_path / "x", hidden=16, depth=1)
    with pytest.raises(OdebenchError, match="flags differ"):
        train_student(DistillConfig(target="direct", steps=4, batch_size=8, grid=5, checkpoint_every=1), "gmm",
                      tmp_path / "x", resume=True, hidden=16, depth=1)


def test_cli_train_then_run(tmp_path):
    from typer.testing import CliRunner

    from odebench.cli import app

    r = CliRunner().invoke(app, ["train", "direct", "--steps", "20", "--batch-size", "32", "--grid", "10",
                                 "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "student.json").is_file()
    bad = CliRunner().invoke(app, ["train", "nope", "--out", str(tmp_path / "e")])
    assert bad.exit_code == 2 and "unknown target" in bad.output


def test_ema_target_network(tmp_path, monkeypatch):
    """With --ema the CM target comes from an EMA copy; ema = 0 (default) uses the student itself."""
    import baselines.distill as distill

    calls = []
    real = distill.cm_target

    def spy(student, *a, **k):
        calls.append(student)
        return real(student, *a, **k)

    monkeypatch.setattr(distill, "cm_target", spy)
    torch.set_num_threads(1)
    base = dict(target="cm", steps=6, batch_size=16, grid=10, checkpoint_every=3)
    a = train_student(DistillConfig(**base), "gmm", tmp_path / "a", hidden=16, depth=1)
    b = train_student(DistillConfig(**base, ema=0.9), "gmm", tmp_path / "b", hidden=16, depth=1)
    assert len(calls) == 12
    assert (tmp_path / "a" / "student.safetensors").read_bytes() != (tmp_path / "b" / "student.safetensors").read_bytes()
    # resume with an EMA restores it: equal to the uninterrupted run
    train_student(DistillConfig(**{**base, "steps": 3}, ema=0.9), "gmm", tmp_path / "c", hidden=16, depth=1)
    c = train_student(DistillConfig(**base, ema=0.9), "gmm", tmp_path / "c", resume=True, hidden=16, depth=1)
    assert (tmp_path / "b" / "student.safetensors").read_bytes() == (tmp_path / "c" / "student.safetensors").read_bytes()
    assert a.exists() and b.exists() and c.exists()
    with pytest.raises(OdebenchError, match="--ema"):
        DistillConfig(target="cm", ema=1.0).validate()


def test_lora_student_changes_only_adapted_layers(tmp_path):
    """LoRA through peft: only adapter weights train, and the merged student differs from the teacher
    exactly in the targeted layers (conv_in / conv_out are not LoRA targets and stay bit-equal)."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    teacher = load_teacher("digits")
    side = train_student(DistillConfig(target="cm", steps=3, batch_size=4, grid=10, checkpoint_every=3, lr=1e-2,
                                       lora_rank=2), "digits", tmp_path / "lora", conditional=True)
    w = load_file(str(tmp_path / "lora" / "student.safetensors"))
    t = {f"unet.{k}": v for k, v in teacher.unet.state_dict().items()}
    assert set(w) == set(t)  # plain UNet weights: no peft names survive the merge
    assert torch.equal(w["unet.conv_in.weight"], t["unet.conv_in.weight"])
    assert torch.equal(w["unet.conv_out.weight"], t["unet.conv_out.weight"])
    changed = [k for k in w if not torch.equal(w[k], t[k])]
    assert changed and all(any(p in k for p in ("to_", "conv1", "conv2", "conv_shortcut", "conv.", "time_emb_proj", "linear_")) for k in changed)
    student, _ = __import__("odebench.students.load", fromlist=["load_student"]).load_student(str(side), teacher, conditional=True)
    assert student.steps == 1
