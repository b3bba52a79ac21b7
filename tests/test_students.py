"""Student format round trips, the EDM-CM boundary condition, noise-bank determinism, light import."""
import json
import subprocess
import sys

import pytest
import torch

from odebench.bench import RunConfig, run
from odebench.errors import OdebenchError
from odebench.ode.noise import NoiseBank
from odebench.students.consistency import export_mlp_student
from odebench.students.load import load_student
from odebench.students.mlp import MLPConsistency, edm_cm_scalings
from odebench.teachers import load_teacher


def _model(teacher, seed=0):
    torch.manual_seed(seed)
    m = MLPConsistency(teacher.shape[0], teacher.sigma_data, teacher.sigma_min, hidden=32, depth=2,
                       num_classes=teacher.num_classes)
    for p in m.parameters():  # make the network's output matter at every sigma
        torch.nn.init.normal_(p, std=0.5)
    return m


def test_boundary_condition():
    teacher = load_teacher("gmm")
    m = _model(teacher)
    x = torch.randn(16, 2)
    torch.testing.assert_close(m(x, torch.full((16,), teacher.sigma_min)), x, rtol=0, atol=1e-6)
    assert not torch.allclose(m(x, torch.full((16,), 1.0)), x, atol=1e-2)
    c_skip, c_out, _, _ = edm_cm_scalings(torch.tensor([teacher.sigma_min, 80.0], dtype=torch.float64), 0.5, teacher.sigma_min)
    assert c_skip[0] == 1 and c_out[0] == 0 and c_skip[1] < 1e-4


def test_checkpoint_round_trip(tmp_path):
    teacher = load_teacher("gmm64")
    m = _model(teacher)
    side = export_mlp_student(tmp_path / "cm", m, teacher, conditional=True, steps=2, training={"loss": "l2"}, step=7)
    for path in (side, tmp_path / "cm.safetensors", tmp_path):
        student, note = load_student(str(path), teacher, conditional=True)
        assert note is None and student.steps == 2 and student.name == "cm"
        x = torch.randn(5, 64)
        cond = torch.arange(5) % 4
        torch.testing.assert_close(student(x, 3.0, cond), m(x, torch.full((5,), 3.0), cond))
    meta = json.loads(side.read_text())
    assert meta["teacher"]["fingerprint"] == teacher.fingerprint() and meta["step"] == 7


def test_tampered_weights_are_refused(tmp_path):
    teacher = load_teacher("gmm")
    side = export_mlp_student(tmp_path / "s", _model(teacher), teacher, conditional=False)
    w = tmp_path / "s.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-3] ^= 0xFF
    w.write_bytes(bytes(blob))
    with pytest.raises(OdebenchError, match="checksum"):
        load_student(str(side), teacher)


def test_multistep_sampling_is_deterministic_and_batch_independent(tmp_path):
    """k-step CM sampling re-noises from each sample's own stream: batch size cannot change it."""
    teacher = load_teacher("gmm")
    side = export_mlp_student(tmp_path / "s", _model(teacher), teacher, conditional=False, steps=3)
    common = dict(students=(str(side),), samples=40, curve_points=2, curve_samples=8, floor_samples=0, ksteps=(1, 2))
    a = run(RunConfig(**common, batch_size=40, out=tmp_path / "a"))[0].result["metrics"]
    b = run(RunConfig(**common, batch_size=7, out=tmp_path / "b"))[0].result["metrics"]
    for k in ("ode_mse@ref", "ode_mse@ref[k=1]", "ode_mse@ref[k=2]"):
        # equal up to float32 matmul blocking, which differs with batch size; the noise is identical
        assert a[k]["value"] == pytest.approx(b[k]["value"], rel=1e-6)
    # k really changes the sampler, the last step included (a step at sigma_min would be a no-op)
    assert len({a[k]["value"] for k in ("ode_mse@ref[k=1]", "ode_mse@ref[k=2]", "ode_mse@ref")}) == 3


def test_noise_bank_is_per_index():
    bank = NoiseBank(5, (3,))
    full = bank.draw(range(10))
    torch.testing.assert_close(torch.cat([bank.draw(range(0, 4)), bank.draw(range(4, 10))]), full, rtol=0, atol=0)
    torch.testing.assert_close(bank.draw([7, 2]), full[[7, 2]], rtol=0, atol=0)
    assert not torch.equal(bank.draw(range(10), stream=1), full)
    assert not torch.equal(NoiseBank(6, (3,)).draw(range(10)), full)
    assert torch.equal(bank.draw(range(3), dtype=torch.float64), full[:3].double())
    assert abs(float(NoiseBank(0, (1000,)).draw(range(20)).std()) - 1) < 0.02


def test_import_is_light():
    code = ("import sys, odebench; heavy = [m for m in ('torch', 'torchdiffeq', 'diffusers', 'scipy', 'rich', 'typer') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
