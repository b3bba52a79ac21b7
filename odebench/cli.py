"""The `odebench` command line: parses, calls the API, prints. No numerics live here."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from odebench.errors import OdebenchError
from odebench.ode.spec import DEFAULT_ATOL, DEFAULT_BATCH, DEFAULT_METHOD, DEFAULT_RTOL, DEFAULT_TIME

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="ODE-error benchmark for consistency-model students of diffusion teachers.")
cache_app = typer.Typer(add_completion=False, help="Inspect and manage the trajectory cache.")
app.add_typer(cache_app, name="cache")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


# click's usage-error base class, wherever this typer keeps its click (typer >= 0.16 vendors one)
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
EXIT_BAD_INPUT = 2  # an OdebenchError: the input or a file is at fault
EXIT_INTERNAL = 3  # anything else: a bug (or an environment odebench does not recognise)
DEBUG_ENV = "ODEBENCH_DEBUG"


_debug_flag = False  # set by --debug on every invocation


def _debug() -> bool:
    return _debug_flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help=f"Show the Python traceback of any error (also {DEBUG_ENV}=1).")):
    """ODE-error benchmark for consistency-model students of diffusion teachers."""
    global _debug_flag
    _debug_flag = debug


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def guarded(fn):
    """Bad input ends in one 'error:' line on stderr and exit code 2; any other exception in one
    'internal error:' line and exit code 3; never a traceback unless --debug (ODEBENCH_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from odebench.distributed import is_main_process

        # several processes fail together (same input, or a stage failure shared by odebench.distributed):
        # rank 0 says it once
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, ClickException):
            raise  # typer's own exits and usage errors (Exit subclasses RuntimeError: keep this first)
        except OdebenchError as e:
            if _debug():
                raise
            if is_main_process():
                print(f"error: {_one_line(str(e), 2000)}", file=sys.stderr)
            raise typer.Exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            if is_main_process():
                print("interrupted: finished reference chunks are cached; rerun the same command to resume", file=sys.stderr)
            raise typer.Exit(130)
        except Exception as e:
            if _debug():
                raise
            if is_main_process():
                what = type(e).__name__ + (f": {_one_line(str(e))}" if str(e).strip() else "")
                print(f"internal error: {what}; rerun with --debug for the traceback", file=sys.stderr)
            raise typer.Exit(EXIT_INTERNAL)

    return wrapper


def _registry_help() -> tuple[str, str]:
    """--student and --teacher help, from the student-kind and teacher-family registries."""
    from odebench.students.kinds import students_help
    from odebench.teachers.family import families_help

    return (f"Student to score (repeatable): {students_help()}. Default: the teacher family's default rows.",
            f"Teacher: {families_help()}. Default: the student file's teacher, else digits.")


STUDENT_HELP, TEACHER_HELP = _registry_help()


@app.command()
@guarded
def run(
    student: Optional[List[str]] = typer.Option(None, "--student", "-s", help=STUDENT_HELP),
    teacher: Optional[str] = typer.Option(None, "--teacher", "-t", help=TEACHER_HELP),
    samples: Optional[int] = typer.Option(None, help="Number of samples (noise seeds) per student (default: the teacher's: digits 512, gmm 1024, text-to-image 64)."),
    seed: int = typer.Option(0, help="Noise-bank seed: sample i's noise comes from (seed, i)."),
    name: Optional[str] = typer.Option(None, help="Run directory name (with several students: a prefix)."),
    out: Path = typer.Option(Path("runs"), help="Runs directory."),
    guidance: Optional[float] = typer.Option(None, help="CFG weight w of the teacher ODE (default: the student's, else the teacher's: SDXL 9 with zero uncond, SD 7.5 with the empty prompt)."),
    guidance_form: str = typer.Option("imagen", help="imagen: u + w(c-u);  lcm: c + w(c-u) (= imagen w+1)."),
    uncond: bool = typer.Option(False, "--uncond", help="Unconditional sampling (the full mixture)."),
    conditional: bool = typer.Option(False, "--conditional", help="Class-conditional sampling (labels i mod C)."),
    method: str = typer.Option(DEFAULT_METHOD, help="Reference solver (torchdiffeq adaptive): dopri5 | dopri8 | bosh3 | adaptive_heun | fehlberg2."),
    rtol: float = typer.Option(DEFAULT_RTOL, help="Reference relative tolerance."),
    atol: float = typer.Option(DEFAULT_ATOL, help="Reference absolute tolerance."),
    time_variable: str = typer.Option(DEFAULT_TIME, "--time", help="Integration variables: lambda (y = x/sigma against 1/sigma: the data-prediction exponential integrator, DDIM is its Euler step) | log-sigma | sigma."),
    dtype: Optional[str] = typer.Option(None, help="fp32 | bf16 | fp16: the precision of the teacher's network (every network teacher: digits, SD, SDXL, SD3, FLUX.1; default fp32). Part of the reference's cache key; the reference floor reports what it costs in accuracy."),
    state_dtype: Optional[str] = typer.Option(None, "--state-dtype", help="float32 | float64: the reference ODE state's dtype (default: the teacher's: float64 analytic, float32 network)."),
    ref_batch: int = typer.Option(DEFAULT_BATCH, help="Samples per reference solve (they share one step size)."),
    solver_option: Optional[List[str]] = typer.Option(None, "--solver-option", help="Extra torchdiffeq option key=value (first_step, max_num_steps, safety, ifactor, dfactor, min_step, max_step)."),
    batch_size: int = typer.Option(256, help="Student sampling batch size."),
    curve_points: int = typer.Option(8, help="Noise levels of the per-sigma error curve (0 to skip)."),
    curve_samples: int = typer.Option(64, help="Samples used for the error curve."),
    floor_samples: int = typer.Option(8, help="Samples whose reference is re-solved for the floor: at 10x tighter tolerance (solver part) and, for a bf16/fp16 network, in float32 (precision part). 0 skips."),
    allow_mismatch: bool = typer.Option(False, help="Score a student against a teacher ODE it was not trained for."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the trajectory cache."),
    cache_dir: Optional[Path] = typer.Option(None, help="Trajectory cache directory (default $ODEBENCH_CACHE or ~/.cache/odebench)."),
    prompts: Optional[str] = typer.Option(None, help="Text-to-image teachers: prompt file (.txt one per line, .jsonl or .csv), or 'builtin' (16 captions; the default). Sample i gets prompt i mod P."),
    prompt_column: Optional[str] = typer.Option(None, help="Column of a .jsonl/.csv prompt file (default: caption, text or prompt)."),
    device: Optional[str] = typer.Option(None, help="Text-to-image teachers: cuda | cpu (default: cuda when available)."),
    vae: Optional[str] = typer.Option(None, help="Text-to-image teachers: a separate VAE folder or hub id (e.g. SDXL's fp16-fix VAE, run in --dtype); default: the teacher's VAE in float32."),
    uncond_embeddings: Optional[str] = typer.Option(None, "--uncond-embeddings", help="CFG uncond branch of text-to-image teachers: zeros (the paper; SDXL's default) | empty (the encoded empty prompt; SD's default)."),
    height: Optional[int] = typer.Option(None, help="Text-to-image output height in pixels (default: the UNet's sample size x 8, e.g. SDXL 1024; sets SDXL's add_time_ids)."),
    width: Optional[int] = typer.Option(None, help="Text-to-image output width in pixels (default as --height)."),
    student_guidance: Optional[float] = typer.Option(None, help="How an LCM-LoRA / LCM-SDXL / checkpoint-* student was distilled: its guidance weight (LCM-SDXL: the embedded one; pipeline guidance_scale = imagen w)."),
    student_guidance_form: str = typer.Option("imagen", help="Form of --student-guidance: imagen | lcm."),
    student_convention: Optional[str] = typer.Option(None, help="Override the detected UNet student convention: lcm (LCMScheduler) | paper (direct-cms checkpoints) | odebench."),
    ddim100_timesteps: str = typer.Option("auto", help="ode_mse@ddim100 reference: sigma (UNet at t-1) | paper (UNet at the integer t, the released code) | auto (what the student sidecars declare, else the teacher family's: paper for SDXL, sigma otherwise)."),
    metrics: str = typer.Option("auto", help="Image metrics of text-to-image teachers (fid, fd_dinov2, clip_score, aesthetic, cmmd). auto: every metric whose weights are found (skipped ones listed with why) | ode | a list such as fid,clip_score (each required)."),
    fid_weights: Optional[str] = typer.Option(None, help="Inception TorchScript (clean-fid's inception-2015-12-05.pt)."),
    dinov2_weights: Optional[str] = typer.Option(None, help="DINOv2 transformers folder or hub id (default facebook/dinov2-large)."),
    clip_weights: Optional[str] = typer.Option(None, help="open_clip weights file or pretrained tag (default ViT-L/14 OpenAI)."),
    clip_arch: Optional[str] = typer.Option(None, help="open_clip architecture (default ViT-L-14-quickgelu)."),
    aesthetic_weights: Optional[str] = typer.Option(None, help="LAION aesthetic predictor sac+logos+ava1-l14-linearMSE.pth."),
    cmmd_weights: Optional[str] = typer.Option(None, help="CMMD's CLIP ViT-L/14-336 weights: an open_clip file or pretrained tag (default openai: timm/vit_large_patch14_clip_336.openai, or ViT-L-14-336px.pt)."),
    cmmd_arch: Optional[str] = typer.Option(None, help="open_clip architecture for CMMD (default ViT-L-14-336-quickgelu)."),
    fd_bootstrap: int = typer.Option(10, help="Bootstrap repetitions for the stderr of FID / FD-DINOv2 (0: none; each costs one FD)."),
    threads: Optional[str] = typer.Option(None, "--threads", help="CPU threads for torch: a number, or auto (default: the idle cores this process can get; env ODEBENCH_THREADS)."),
):
    """Score students against the teacher's reference PF-ODE solution; one result directory per student."""
    from odebench.threads import configure, parse_threads

    configure(parse_threads(threads))
    from odebench.bench import RunConfig, run as run_api
    from odebench.ode.spec import SolverSpec, parse_solver_options
    from odebench.progress import RichProgress
    from odebench.teachers.base import Guidance

    if uncond and conditional:
        raise OdebenchError("--uncond and --conditional exclude each other")
    g = Guidance(guidance, guidance_form) if guidance is not None else None
    if dtype in ("float32", "float64"):  # before v0.2 --dtype was the state dtype
        if state_dtype is not None:
            raise OdebenchError(f"--dtype {dtype} is the old spelling of --state-dtype; give --state-dtype only")
        print(f"warning: --dtype {dtype} is deprecated for the ODE state: use --state-dtype {dtype} "
              "(--dtype now sets the network's precision: fp32 | bf16 | fp16)", file=sys.stderr)
        state_dtype, dtype = dtype, None
    if dtype is not None and dtype not in ("fp32", "bf16", "fp16"):
        raise OdebenchError(f"unknown --dtype {dtype!r}: the network's precision is fp32, bf16 or fp16 "
                            "(the ODE state's is --state-dtype float32|float64)")
    model_dtype = dtype
    teacher_options = {k: v for k, v in {"dtype": model_dtype, "device": device, "vae": vae, "height": height, "width": width,
                                         "uncond": uncond_embeddings}.items() if v is not None}
    weights = {k: v for k, v in {"fid": fid_weights, "dinov2": dinov2_weights, "clip": clip_weights, "clip_arch": clip_arch,
                                 "aesthetic": aesthetic_weights, "cmmd": cmmd_weights, "cmmd_arch": cmmd_arch}.items() if v is not None}
    spec = SolverSpec(method=method, rtol=rtol, atol=atol, time=time_variable, dtype=state_dtype,
                      batch=ref_batch, options=parse_solver_options(solver_option or []))
    config = RunConfig(teacher=teacher, students=tuple(student or ()), samples=samples, seed=seed, guidance=g,
                       conditional=False if uncond else (True if conditional else None), solver=spec,
                       batch_size=batch_size, curve_points=curve_points, curve_samples=curve_samples,
                       floor_samples=floor_samples, out=out, name=name, allow_mismatch=allow_mismatch,
                       cache_dir=cache_dir, use_cache=not no_cache, prompts=prompts, prompt_column=prompt_column,
                       teacher_options=teacher_options,
                       student_guidance=Guidance(student_guidance, student_guidance_form) if student_guidance is not None else None,
                       student_convention=student_convention, ddim100_timesteps=ddim100_timesteps, metrics=metrics,
                       metric_weights=weights, fd_bootstrap=fd_bootstrap)
    from odebench.distributed import cpu_launch_hint, is_main_process

    hint = cpu_launch_hint()
    if hint:
        print(f"warning: {hint}", file=sys.stderr)
    console = _console()
    outcomes = run_api(config, progress=RichProgress(_console(stderr=True)), command=["odebench", *sys.argv[1:]])
    if is_main_process():  # other ranks computed their shards; rank 0 wrote and reports the runs
        from odebench.table import print_run_table

        print_run_table(console, outcomes)


@app.command()
@guarded
def train(
    target: str = typer.Argument(..., help="cm (one teacher step + the student itself) or direct (teacher solves to 0)."),
    teacher: str = typer.Option("gmm", "--teacher", "-t", help="gmm | gmm64 | gmm-flow | digits | path to a teacher JSON | sdxl, an SDXL diffusers folder or cached hub id (the paper's setting and defaults) | an SD3 / FLUX.1 folder or hub id (LoRA flow students, exported as student cards)."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default 2000; SDXL 250, the released script)."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size, split over accelerate processes (default 256; SDXL 16)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate, constant (default 1e-3; SDXL 1e-4)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (default 0; SDXL 1e-2)."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clip."),
    grid: int = typer.Option(100, help="Grid size N (Karras levels for continuous teachers; a flow teacher's own N-step FlowMatchEuler levels, then t = 0)."),
    solver: str = typer.Option("ddim", help="Teacher solver for a step: ddim | euler | heun."),
    loss: str = typer.Option("l2", help="l2 | huber (pseudo-Huber, c = --huber-c)."),
    huber_c: float = typer.Option(0.001, help="Pseudo-Huber constant."),
    guidance: Optional[float] = typer.Option(None, help="CFG weight of the teacher ODE (default: the teacher's; SDXL 9 imagen, zero uncond)."),
    guidance_form: str = typer.Option("imagen", help="imagen | lcm."),
    conditional: bool = typer.Option(False, "--conditional", help="Class-conditional student (SDXL students are always caption-conditioned)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the data, noise and grid-index stream (default 0; SDXL 24)."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Write a resumable checkpoint every N steps (default 500; SDXL 50)."),
    ema: float = typer.Option(0.0, help="CM target network = EMA of the student with this decay (0: the student itself, the paper's setting)."),
    lora_rank: Optional[int] = typer.Option(None, help="UNet teachers: LoRA rank through peft (default 0 = full fine-tune; SDXL 64); merged into the shipped weights."),
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha (default: equal to the rank; SDXL 64)."),
    data: Optional[Path] = typer.Option(None, help="SDXL / SD3 / FLUX: image-caption folder (images + metadata.jsonl/.csv with file_name and text|caption|prompt, or a NAME.txt caption beside each image)."),
    resolution: Optional[int] = typer.Option(None, help="SDXL / SD3 / FLUX: training resolution in pixels (default 1024): short side resized, random crop."),
    mixed_precision: Optional[str] = typer.Option(None, help="SDXL: fp16 | bf16 | no (default fp16 on CUDA, no on CPU)."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing", help="SDXL: recompute UNet activations in backward (default: on with CUDA)."),
    optimizer: Optional[str] = typer.Option(None, help="SDXL: auto | adamw | adamw8bit (auto: bitsandbytes' AdamW8bit on CUDA when installed, else AdamW)."),
    device: Optional[str] = typer.Option(None, help="SDXL: cuda | cpu (default: cuda when available; under accelerate launch, each process's GPU)."),
    vae: Optional[str] = typer.Option(None, help="SDXL: a separate VAE folder or hub id, e.g. the fp16-fix VAE (run in the weights' dtype); default: the teacher's VAE in float32."),
    out: Path = typer.Option(Path("students/run"), help="Output directory (checkpoint, log.jsonl, student.json/.safetensors)."),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt."),
    threads: Optional[str] = typer.Option(None, "--threads", help="CPU threads for torch: a number, or auto (default: the idle cores this process can get; env ODEBENCH_THREADS)."),
):
    """Distil a CM or Direct CM student (one loop, two targets); writes an odebench student.
    Multi-GPU: accelerate launch -m odebench train ... (SDXL)."""
    from odebench.threads import configure, parse_threads

    configure(parse_threads(threads))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn

    from baselines.distill import DistillConfig
    from baselines.train import train_student, trainer_for
    from odebench.teachers.base import Guidance

    image_flags = {"data": data, "resolution": resolution, "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
                   "optimizer": optimizer, "device": device, "vae": vae}
    trainer = trainer_for(teacher)
    defaults = trainer.defaults()
    sdxl = None
    if trainer.image_options:
        from baselines.sdxl_train import SDXLOptions

        sdxl = SDXLOptions(**{k: v for k, v in image_flags.items() if v is not None})
    else:
        given = [k for k, v in image_flags.items() if v is not None]
        if given:
            raise OdebenchError(f"{', '.join('--' + k.replace('_', '-') for k in given)} apply to SDXL teachers only, not {teacher!r}")

    def pick(name, value):
        return defaults[name] if value is None else value

    cfg = DistillConfig(target=target, steps=pick("steps", steps), batch_size=pick("batch_size", batch_size), lr=pick("lr", lr),
                        weight_decay=pick("weight_decay", weight_decay), grad_clip=grad_clip, grid=grid, solver=solver, loss=loss,
                        huber_c=huber_c, seed=pick("seed", seed), checkpoint_every=pick("checkpoint_every", checkpoint_every), ema=ema,
                        lora_rank=pick("lora_rank", lora_rank), lora_alpha=pick("lora_alpha", lora_alpha))
    cfg.validate()
    g = Guidance(guidance, guidance_form) if guidance is not None else None
    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch, one progress bar and one line
    with RP(TextColumn(f"[bold]train {target}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), console=_console(stderr=True), disable=not main_process) as bar:
        tid = bar.add_task("train", total=cfg.steps, info="")

        def progress(step, loss_value, rate):
            bar.update(tid, completed=step, info=f"loss {loss_value:.4g} · {rate:,.0f} samples/s")

        side = train_student(cfg, teacher, out, g, conditional or None, resume, progress=progress, sdxl=sdxl)
    if main_process:
        print(f"student: {side}")


def _csv(text: str, conv, flag: str) -> tuple:
    """A comma list of values for a study's grid flag."""
    try:
        values = tuple(conv(v.strip()) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise OdebenchError(f"--{flag} must be a comma list, got {text!r}") from None
    if not values:
        raise OdebenchError(f"--{flag} is empty")
    return values


@app.command()
@guarded
def study(
    teacher: str = typer.Option("gmm", "--teacher", "-t", help="gmm | gmm64 | digits | a teacher JSON (the study trains on CPU-sized teachers)."),
    methods: str = typer.Option("cm,direct", help="Comma list of distillation targets: cm, direct."),
    steps: str = typer.Option("500,2000,8000", help="Training budgets in optimiser steps, comma list. One training run per "
                                                   "method and seed serves every budget (snapshots; constant lr, bitwise resume)."),
    seeds: int = typer.Option(3, help="Number of training seeds (first-seed, first-seed + 1, ...): the data, noise and grid-index stream."),
    first_seed: int = typer.Option(0, help="The first training seed."),
    loss: str = typer.Option("l2", help="Losses to cross with the grid: l2, huber or l2,huber (pseudo-Huber, c = --huber-c)."),
    solver: str = typer.Option("ddim", help="Teacher solvers of a distillation step to cross with the grid: ddim, heun or ddim,heun "
                                            "(euler = ddim)."),
    lora: str = typer.Option("0", help="UNet teachers: LoRA ranks to cross with the grid, 0 = full fine-tune (e.g. 0,64)."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch (default: 16 for UNet teachers, as the shipped digits students and the paper; 256 otherwise)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate, constant (default: 1e-4 for UNet teachers; 1e-3 otherwise)."),
    weight_decay: float = typer.Option(0.0, help="AdamW weight decay."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clip."),
    grid: int = typer.Option(100, help="Distillation grid size N."),
    huber_c: float = typer.Option(0.001, help="Pseudo-Huber constant."),
    ema: float = typer.Option(0.0, help="CM target network = EMA of the student with this decay (0: the student itself)."),
    lora_alpha: float = typer.Option(0.0, help="LoRA alpha (0: the rank)."),
    checkpoint_every: int = typer.Option(250, help="Training checkpoint interval in steps (an interrupted study resumes from the last one)."),
    hidden: int = typer.Option(256, help="MLP students (mixture teachers): hidden width."),
    depth: int = typer.Option(3, help="MLP students: hidden layers."),
    guidance: Optional[float] = typer.Option(None, help="CFG weight of the teacher ODE (default: the teacher's)."),
    guidance_form: str = typer.Option("imagen", help="imagen | lcm."),
    samples: Optional[int] = typer.Option(None, help="Evaluation samples per student (default: the teacher's)."),
    eval_seed: int = typer.Option(0, help="Noise seed of the evaluation: every student gets the same noise and reference."),
    method: str = typer.Option(DEFAULT_METHOD, help="Reference solver (torchdiffeq adaptive)."),
    rtol: float = typer.Option(DEFAULT_RTOL, help="Reference relative tolerance."),
    atol: float = typer.Option(DEFAULT_ATOL, help="Reference absolute tolerance."),
    ref_batch: int = typer.Option(DEFAULT_BATCH, help="Samples per reference solve."),
    eval_batch_size: int = typer.Option(256, help="Student sampling batch size."),
    curve_points: int = typer.Option(8, help="Noise levels of each run's per-sigma error curve."),
    curve_samples: int = typer.Option(64, help="Samples of the error curve."),
    floor_samples: int = typer.Option(64, help="Samples re-solved for the reference floor (0 to skip)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Trajectory cache directory (default $ODEBENCH_CACHE or ~/.cache/odebench)."),
    out: Path = typer.Option(..., help="Study directory: study.json, runs/, students/, train/ (checkpoints)."),
    plan_only: bool = typer.Option(False, "--plan", help="List the grid's points, done or to do, and exit."),
    threads: Optional[str] = typer.Option(None, "--threads", help="CPU threads for torch: a number, or auto (default: the idle cores this process can get; env ODEBENCH_THREADS)."),
):
    """Train CM and Direct CM students over training budgets and seeds (resumable), score each against one
    shared reference from the same noise, and write OUT/study.json. Report: odebench report --study OUT."""
    from odebench.threads import configure, parse_threads

    configure(parse_threads(threads))
    from odebench.ode.spec import SolverSpec
    from odebench.study.plan import StudyConfig, plan
    from odebench.study.runner import StudyProgress, run_study

    if seeds < 1 or first_seed < 0:
        raise OdebenchError("--seeds must be at least 1 and --first-seed non-negative")
    config = StudyConfig(teacher=teacher, methods=_csv(methods, str, "methods"), steps=_csv(steps, int, "steps"),
                         seeds=tuple(range(first_seed, first_seed + seeds)), losses=_csv(loss, str, "loss"),
                         solvers=_csv(solver, str, "solver"), lora_ranks=_csv(lora, int, "lora"), batch_size=batch_size,
                         lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, grid=grid, huber_c=huber_c, ema=ema,
                         lora_alpha=lora_alpha, checkpoint_every=checkpoint_every, hidden=hidden, depth=depth,
                         guidance=guidance, guidance_form=guidance_form, samples=samples, eval_seed=eval_seed,
                         solver=SolverSpec(method=method, rtol=rtol, atol=atol, batch=ref_batch),
                         eval_batch_size=eval_batch_size, curve_points=curve_points, curve_samples=curve_samples,
                         floor_samples=floor_samples)
    console = _console()
    if plan_only:
        from odebench.study.store import FILE, read_study

        points, _ = plan(config)
        done = {p["key"] for p in read_study(out)["points"]} if (out / FILE).is_file() else set()
        for p in points:
            console.print(f"{'done' if p.key in done else 'todo'}  {p.name}  [dim]{p.key}")
        console.print(f"{len(points)} points, {sum(p.key in done for p in points)} done; "
                      f"{sum(p.steps for p in points if p.key not in done)} optimiser steps if trained from scratch "
                      "(runs continue from their previous budget, so fewer)")
        return

    class Bars(StudyProgress):
        def __init__(self):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RP, TextColumn, TimeElapsedColumn

            self.bar = RP(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                          TimeElapsedColumn(), console=_console(stderr=True))
            self.task = None

        def point_start(self, point, index, total, what):
            if what == "train":
                self.bar.start()
                self.task = self.bar.add_task(f"[{index + 1}/{total}] train {point.name}", total=point.steps, info="")
            else:
                self.bar.stop()
                self.task = None

        def train_step(self, point, step, loss_value):
            if self.task is not None:
                self.bar.update(self.task, completed=step, info=f"loss {loss_value:.4g}")

        def point_done(self, point, entry):
            m = entry["metrics"].get("ode_mse@ref", {}).get("value")
            console.print(f"done {point.name}: ode_mse@ref {m:.4g}, trained {entry['compute']['trained_steps']} steps "
                          f"in {entry['compute']['train_s']:.0f} s, evaluated in {entry['compute']['eval_s']:.0f} s")

    bars = Bars()
    try:
        result = run_study(config, out, bars, cache_dir)
    except KeyboardInterrupt:
        bars.bar.stop()
        print(f"interrupted: finished points are in {out}/study.json and training resumes from its last checkpoint; "
              "rerun the same command to continue", file=sys.stderr)
        raise typer.Exit(130)
    bars.bar.stop()
    c = result["compute"]
    console.print(f"study {out}: {len(result['points'])} points; training {c['train_s'] / 60:.1f} min "
                  f"({c['train_steps']} steps), evaluation {c['eval_s'] / 60:.1f} min. "
                  f"Report: odebench report --study {out} -f md --out REPORT.md")


@app.command()
@guarded
def report(
    runs: Optional[List[str]] = typer.Argument(None, help="More runs to compare (names under --runs-dir, or run directories)."),
    compare: Optional[List[str]] = typer.Option(None, "--compare", "-c", help="Runs to compare side by side: `--compare cm direct` "
                                                "(names under --runs-dir or run directories). Default: every run in --runs-dir."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run names are looked up."),
    fmt: str = typer.Option("table", "--format", "-f", help="table (terminal) | md | html | json."),
    out: Optional[Path] = typer.Option(None, help="Output file (md: images go to <stem>_files/ beside it; html: one self-contained file). "
                                                  "json without --out prints to stdout."),
    ode_metric: str = typer.Option("ode_mse@ref", help="The ODE-error metric set against quality (e.g. ode_mse@ddim100)."),
    include_oracle: bool = typer.Option(False, help="Keep the `ref` oracle row in the ODE-error-vs-quality analysis."),
    study: Optional[Path] = typer.Option(None, "--study", help="Report a study directory (odebench study --out): cells over seeds "
                                                               "with t-intervals, CM - Direct CM per budget, pairs-bootstrap agreement, diagnostics."),
):
    """Runs side by side: the best value per metric, comparability warnings, and whether lower ODE error
    went with better samples (rank correlation with a bootstrap interval, plots)."""
    from odebench.report.model import build_report
    from odebench.report.render import json_text, print_report, write_html, write_json, write_markdown
    from odebench.report.runs import find_runs

    if fmt not in ("table", "md", "html", "json"):
        raise OdebenchError(f"unknown --format {fmt!r} (choose table, md, html or json)")
    if fmt in ("md", "html") and out is None:
        raise OdebenchError(f"--format {fmt} writes files: give --out FILE")
    if fmt == "table" and out is not None:
        raise OdebenchError("--out needs --format md, html or json")
    if out is not None:
        from odebench.fileio import check_writable_file

        check_writable_file(out)  # before the analysis, not after it
    if study is not None:
        from odebench.report import study as study_report

        if compare or runs:
            raise OdebenchError("--study reports a study directory; drop the run names")
        srep = study_report.build_study_report(study, ode_metric)
        if fmt == "table":
            study_report.print_study(_console(), srep)
        elif fmt == "json" and out is None:
            sys.stdout.write(study_report.json_text(srep))
        else:
            written = {"md": study_report.write_markdown, "html": study_report.write_html, "json": study_report.write_json}[fmt](srep, out)
            print("wrote " + ", ".join(str(p) for p in written))
        return
    rep = build_report(find_runs(list(compare or []) + list(runs or []), runs_dir), ode_metric, include_oracle)
    if fmt == "table":
        print_report(_console(), rep)
        return
    if fmt == "json" and out is None:
        sys.stdout.write(json_text(rep))
        return
    written = {"md": write_markdown, "html": write_html, "json": write_json}[fmt](rep, out)
    print("wrote " + ", ".join(str(p) for p in written))


@app.command()
@guarded
def regress(
    baseline: Path = typer.Option(..., "--baseline", "-b", help="Baseline JSON (e.g. reports/baseline.json)."),
    runs: Optional[Path] = typer.Option(None, "--runs", help="Read the suites' runs from this runs directory instead of recomputing them."),
    suite: Optional[List[str]] = typer.Option(None, "--suite", help="Only these suites (repeatable)."),
    update: bool = typer.Option(False, "--update", help="Deliberately rewrite the baseline: recompute each suite under several "
                                                         "thread counts, batch sizes and CPU instruction sets and set tolerances "
                                                         "from the measured spread (the model is written into the file)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Trajectory cache directory (default $ODEBENCH_CACHE or ~/.cache/odebench)."),
    show_all: bool = typer.Option(False, "--all", help="List every checked number, not only those that moved."),
    threads: Optional[str] = typer.Option(None, "--threads", help="CPU threads for torch: a number, or auto (default: the idle cores this process can get; env ODEBENCH_THREADS)."),
):
    """Recompute a small deterministic benchmark and compare it with a committed baseline; exit 1 on a regression."""
    from odebench.threads import configure, parse_threads

    configure(parse_threads(threads))
    from odebench import regress as rg
    from odebench.progress import RichProgress
    from odebench.table import fmt

    console = _console()
    progress = RichProgress(_console(stderr=True))
    if update:
        if runs is not None:
            raise OdebenchError("--update recomputes the suites (tolerances need several executions); drop --runs")
        old = rg.suites_to_update(baseline, partial=bool(suite))
        new = rg.build_baseline(rg.select_suites(old, list(suite or [])), cache_dir, progress, log=console.print)
        if suite:  # keep the suites not asked for
            fresh = {s["name"]: s for s in new["suites"]}
            new["suites"] = [fresh.get(s["name"], s) for s in old["suites"] if "runs" in s or s["name"] in fresh]
        rg.write_baseline(baseline, new)
        n = sum(len(r["metrics"]) for s in new["suites"] for r in s["runs"].values())
        console.print(f"wrote {baseline}: {len(new['suites'])} suites, {n} numbers, tolerances from "
                      f"{len(new['variants'])} variants")
        return
    base = rg.read_baseline(baseline)
    checks = []
    for s in rg.select_suites(base, list(suite or [])):
        now = rg.read_suite_runs(s, runs) if runs is not None else rg.compute_suite(s, cache_dir, progress=progress)
        checks += rg.compare(s, now)
    # one line per number: greppable in CI logs and whole at any terminal width
    for c in checks:
        if show_all or c.status != "ok":
            style = "bold red" if c.failed else ("yellow" if c.status == "moved" else "")
            diff = "" if c.baseline is None or c.now is None else f" (|diff| {fmt(abs(c.now - c.baseline))}, allowed {c.allowed})"
            status = f"[{style}]{c.status}[/]" if style else c.status
            console.print(f"{status} {c.suite}/{c.run} {c.metric}: {fmt(c.baseline)} -> {fmt(c.now)}{diff}", highlight=False)
    failed = [c for c in checks if c.failed]
    count = {st: sum(c.status == st for c in checks) for st in ("ok", "moved", "new")}
    console.print(f"{len(checks)} numbers checked: {count['ok']} unchanged, {count['moved']} moved within tolerance, "
                  f"{count['new']} new (not in the baseline), {len(failed)} regressed or missing")
    if failed:
        print(f"regression: {', '.join(f'{c.suite}/{c.run}/{c.metric}' for c in failed[:5])}"
              + (" ..." if len(failed) > 5 else ""), file=sys.stderr)
        raise typer.Exit(1)


@app.command("ls")
@guarded
def ls(runs_dir: Path = typer.Option(Path("runs"), help="Runs directory to list.")):
    """List built-in teachers, student kinds and the runs found in RUNS_DIR."""
    from rich.table import Table

    from odebench.results import read_result
    from odebench.teachers.family import families

    console = _console()
    t = Table(title="teachers")
    t.add_column("family")
    t.add_column("name")
    t.add_column("what")
    for fam in families():
        for k, v in (fam.presets or {fam.name: fam.help}).items():
            t.add_row(fam.name, k, v)
    console.print(t)
    console.print("students: " + STUDENT_HELP)
    if runs_dir.is_dir():
        r = Table(title=f"runs in {runs_dir}")
        for c in ("run", "teacher", "student", "samples", "ode_mse@ref"):
            r.add_column(c)
        for d in sorted(p for p in runs_dir.iterdir() if (p / "result.json").is_file()):
            try:
                res = read_result(d)
            except OdebenchError as e:
                r.add_row(d.name, f"[red]{e}", "", "", "")
                continue
            mse = res["metrics"].get("ode_mse@ref", {}).get("value")
            r.add_row(d.name, res["teacher"]["teacher"], res["student"]["spec"], str(res["samples"]),
                      "" if mse is None else f"{mse:.4g}")
        console.print(r)


@cache_app.command("ls")
@guarded
def cache_ls(cache_dir: Optional[Path] = typer.Option(None, help="Cache directory.")):
    """List cache entries: what each holds and its size."""
    from rich.table import Table

    from odebench.ode.cache import TrajectoryCache

    cache = TrajectoryCache(cache_dir)
    entries = cache.entries()
    t = Table(title=f"trajectory cache {cache.root}")
    for c in ("key", "teacher", "indices", "solver", "size"):
        t.add_column(c)
    total = 0
    for e in entries:
        total += e.size
        p = e.payload or {}
        solver = p.get("spec", {})
        ode = p.get("ode") or p.get("teacher") or {}  # reference entries / memoized solver rows
        what = (f"{solver.get('method', '?')} rtol={solver.get('rtol', '?')}" if solver
                else f"{p.get('kind', '?')} {p.get('method', '')}{':' + str(p['steps']) if 'steps' in p else ''}".strip())
        t.add_row(e.key[:12], str(ode.get("teacher", "?")) if e.ok else f"[red]unreadable: {e.problem}",
                  f"{p.get('start', '?')}..{p.get('stop', '?')}", what, f"{e.size / 1024:.1f} KiB")
    _console().print(t)
    print(f"{len(entries)} entries, {total / 1024 ** 2:.2f} MiB")


@cache_app.command("verify")
@guarded
def cache_verify(cache_dir: Optional[Path] = typer.Option(None, help="Cache directory."),
                 fix: bool = typer.Option(False, help="Delete corrupt entries (they are recomputed when needed).")):
    """Check every entry's checksum; exit 1 if any is corrupt (and not fixed)."""
    from odebench.ode.cache import TrajectoryCache

    entries = TrajectoryCache(cache_dir).entries(verify=True)
    bad = [e for e in entries if not e.ok]
    for e in bad:
        print(f"corrupt: {e.path} ({e.problem})")
        if fix:
            e.path.unlink(missing_ok=True)
    print(f"{len(entries) - len(bad)} ok, {len(bad)} corrupt{' (deleted)' if fix and bad else ''}")
    if bad and not fix:
        raise typer.Exit(1)


@cache_app.command("clear")
@guarded
def cache_clear(cache_dir: Optional[Path] = typer.Option(None, help="Cache directory."),
                yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")):
    """Delete all cached trajectories."""
    from odebench.ode.cache import TrajectoryCache

    cache = TrajectoryCache(cache_dir)
    if not yes and not typer.confirm(f"delete all entries in {cache.dir}?"):
        raise typer.Exit(1)
    print(f"removed {cache.clear()} entries from {cache.dir}")


def main() -> None:
    """Entry point; click's usage errors (an option value of the wrong type, an unknown option) become one
    'error:' line too, with exit code 2, instead of a usage panel."""
    try:
        code = app(standalone_mode=False)
    except ClickException as e:
        ctx = getattr(e, "ctx", None)
        hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        print(f"error: {_one_line(e.format_message(), 2000).rstrip('.')}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:  # ctrl-c or EOF at a prompt (e.g. `cache clear` confirmation)
        print("aborted", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
