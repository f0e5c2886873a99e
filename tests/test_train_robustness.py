"""train on bad input and bad luck: a second run on one --out, a torn log, stale temp files, nonsense numbers,
a full disk, a read-only --out, a damaged resume state, a resume past its --steps, a run that diverges. Each fails
with one line, or heals (saying so in one line as it happens), and keeps earlier files."""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mimflow_core.atomic import atomic_open, temp_files
from mimflow_core.checkpoint import load_checkpoint, nonfinite_weights
from mimflow_core.ema import EMA
from mimflow_core.errors import MIMFlowError
from mimflow_core.losses import TrainingLoss
from mimflow_core.train import TrainOptions, train
from mimflow_core.train.trainer import Trainer
from mimflow_core.train.log import JsonlLog, read_records
from mimflow_core.train.rundir import LOCK, claim_run_directory
from mimflow_lab.cli import main
from tests.conftest import SHORT_RECIPE


def _opts(out: Path, steps: int = 2, **kwargs) -> TrainOptions:
    """A few steps of the tiny recipe on digits, a checkpoint every 2, no evaluation."""
    return TrainOptions(out=str(out), steps=steps, ckpt_every=2, log_every=1, evaluate=False,
                        **{**SHORT_RECIPE, **kwargs})


def _cli_error(capsys, *args: str) -> str:
    """Run ``mimflow-lab train ARGS`` in-process; it must exit 2 with one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """A finished 2-step run (checkpoint at step 2); tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("short") / "run"
    train(_opts(out))
    return out


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# -- one run per --out ---------------------------------------------------------------------------------------
def test_a_second_run_on_a_locked_out_is_refused_naming_the_directory_and_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"PID 4242 on otherhost\n")
        err = _cli_error(capsys, "--out", str(out), "--steps", "1", "--no-eval")
    finally:
        os.close(fd)
    assert f"--out {out}: another train run is using it (PID 4242 on otherhost" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing was written


def test_the_lock_names_this_process_and_is_free_again_after_the_run(tmp_path):
    with claim_run_directory(tmp_path, (), is_main=True):
        assert (tmp_path / LOCK).read_text().startswith(f"PID {os.getpid()} on ")
        with pytest.raises(MIMFlowError, match=f"PID {os.getpid()} on "):
            with claim_run_directory(tmp_path, (), is_main=True):
                pass
    with claim_run_directory(tmp_path, (), is_main=True):
        pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from mimflow_core.train.rundir import claim_run_directory\n"
         "with claim_run_directory(Path(sys.argv[1]), (), True):\n print('locked', flush=True); time.sleep(120)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MIMFlowError, match=f"PID {holder.pid} on "):
            with claim_run_directory(tmp_path, (), is_main=True):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK).read_text().startswith(f"PID {holder.pid} ")  # the file stays, its lock does not
    with claim_run_directory(tmp_path, (), is_main=True):
        pass


def test_under_torchrun_only_rank_0_takes_the_lock(tmp_path):
    with claim_run_directory(tmp_path, (), is_main=True):
        with claim_run_directory(tmp_path / "elsewhere", (), is_main=False):  # another rank: no lock, no files
            pass
    assert not (tmp_path / "elsewhere").exists()


# -- a killed run's leftovers ------------------------------------------------------------------------------
def test_resume_drops_a_torn_last_log_line_and_the_temp_files_a_killed_checkpoint_write_left(short_run, tmp_path):
    out = _copy(short_run, tmp_path / "run")
    complete = (out / "log.jsonl").read_text().splitlines()
    with open(out / "log.jsonl", "a") as f:
        f.write('{"mask_ratio": 0.51, "rec_l2": 1.9')  # the process died mid-write
    stale = [out / ".ckpt.pt.k3j2x9.tmp", out / ".log.jsonl.a81b.tmp"]
    for path in stale:
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    foreign = out / ".notes.txt.1234.tmp"  # not a file the trainer writes: left alone
    foreign.write_text("someone else's")
    with pytest.warns(UserWarning) as caught:
        train(_opts(out, steps=3), resume=True)
    messages = " | ".join(str(w.message) for w in caught)
    assert "dropped its torn last line 4" in messages and "removed 2 temp file(s)" in messages
    lines = (out / "log.jsonl").read_text().splitlines()
    assert lines[:len(complete)] == complete  # every complete line kept, byte for byte
    assert [json.loads(line).get("step") for line in lines[len(complete):]] == [2, 3]  # new start record, step 3
    assert not any(path.exists() for path in stale) and foreign.exists()
    assert load_checkpoint(out / "ckpt.pt")["step"] == 3


def test_a_new_run_removes_the_temp_file_of_a_first_checkpoint_it_never_finished(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".ckpt.pt.zz91.tmp").write_bytes(b"PK\x03\x04")
    with pytest.warns(UserWarning, match=r"removed 1 temp file\(s\) a stopped run left: \.ckpt\.pt\.zz91\.tmp"):
        train(_opts(out, steps=1))
    assert sorted(p.name for p in out.iterdir()) == [LOCK, "ckpt.pt", "log.jsonl"]


def test_temp_files_are_exactly_the_temp_siblings_atomic_open_makes(tmp_path):
    target = tmp_path / "ckpt.pt"
    (tmp_path / ".ckpt.pt2.x1.tmp").write_text("another file's")
    (tmp_path / ".log.jsonl.x2.tmp").write_text("another file's")
    with atomic_open(target) as f:
        f.write(b"new")
        (writing,) = temp_files(target)
        assert writing.name.startswith(".ckpt.pt.") and writing.read_bytes() == b""  # not flushed yet
    assert temp_files(target) == [] and target.read_bytes() == b"new"


def test_the_train_command_shows_each_warning_as_one_line_when_it_happens(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".ckpt.pt.zz91.tmp").write_bytes(b"PK\x03\x04")
    real_run, seen_at_start = Trainer.run, []

    def run(self):
        seen_at_start.append(capsys.readouterr().err)  # what stderr held before the first step
        return real_run(self)

    monkeypatch.setattr(Trainer, "run", run)
    main(["train", "--out", str(out), "--steps", "1", "--no-eval"])
    assert f"mimflow-lab: warning: {out}: removed 1 temp file(s) a stopped run left: .ckpt.pt.zz91.tmp\n" \
        in seen_at_start[0]
    assert "UserWarning" not in seen_at_start[0]  # not Python's two-line form


def test_a_damaged_line_before_the_last_is_one_line_naming_it(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(MIMFlowError, match=r"log\.jsonl: line 2 is not a log record") as error:
        read_records(log)
    assert "\n" not in str(error.value)
    log.write_text('{"step": 1}\n["a list"]\n')
    with pytest.raises(MIMFlowError, match="line 2 is not a log record"):
        read_records(log)


def test_a_log_line_the_system_refuses_is_one_line_naming_the_log(tmp_path):
    log = JsonlLog(tmp_path / "gone" / "log.jsonl", 0, enabled=True)  # its directory was removed under the run
    with pytest.raises(MIMFlowError, match=r"gone/log\.jsonl: cannot append a line \(No such file or directory\)"):
        log.write({"step": 1})


# -- numbers that make no sense ----------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr nan: must be a finite number > 0"),
    (["--lr", "inf"], "--lr inf: must be a finite number > 0"),
    (["--lr", "0"], "--lr 0.0: must be a finite number > 0"),
    (["--lr", "-1e-3"], "--lr -0.001: must be a finite number > 0"),
    (["--flow-weight", "nan"], "--flow-weight nan: must be a finite number >= 0"),
    (["--flow-weight", "-1"], "--flow-weight -1.0: must be a finite number >= 0"),
    (["--ema-decay", "1"], "--ema-decay 1.0: must be a finite number in [0, 1)"),
    (["--ema-decay", "-0.5"], "--ema-decay -0.5: must be a finite number in [0, 1)"),
    (["--label-drop", "nan"], "--label-drop nan: must be a finite number in [0, 1]"),
    (["--sigma", "inf"], "--sigma inf: must be a finite number >= 0"),
    (["--grad-clip", "0"], "--grad-clip 0.0: must be a finite number > 0"),
    (["--weight-decay", "-1"], "--weight-decay -1.0: must be a finite number >= 0"),
    (["--aux-weight", "nan"], "--aux-weight nan: must be a finite number >= 0"),
    (["--gan-weight", "-0.05"], "--gan-weight -0.05: must be a finite number >= 0"),
    (["--sample-cfg", "nan"], "--sample-cfg nan: must be a finite number >= 0"),
    (["--seed", "-1"], "--seed -1: must be an integer in [0, 2**63)"),
    (["--ae-steps", "0"], "--ae-steps 0: must be an integer >= 1"),
    (["--steps", "0"], "--steps"),            # click's own range check, also one line
    (["--batch-size", "0"], "--batch-size"),
    (["--warmup-steps", "-1"], "--warmup-steps"),
])
def test_nonsense_numbers_are_refused_before_any_directory_is_made(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert message in _cli_error(capsys, "--out", str(out), *args)
    assert not out.exists()


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "--steps 0: must be an integer >= 1"),
    ("batch_size", 0, "--batch-size 0: must be an integer >= 1"),
    ("warmup_steps", -1, "--warmup-steps -1: must be an integer >= 0"),
    ("steps", "5", "--steps '5': must be an integer >= 1"),
    ("lr", True, "--lr True: must be a finite number > 0"),
    ("log_every", 0, "--log-every 0: must be an integer >= 1"),
    ("num_workers", -2, "--num-workers -2: must be an integer >= 0"),
    ("phase", 3, "--phase 3: must be an integer equal to 1 or 2"),
    ("mask_ratio", 0.5, "--mask-ratio 0.5: must be a string"),
])
def test_training_options_from_python_are_checked_when_made(field, value, message):
    with pytest.raises(MIMFlowError) as error:
        TrainOptions(out="never-made", **{field: value})
    assert str(error.value) == message


# -- the system refuses a write ----------------------------------------------------------------------------
def test_a_full_disk_at_the_second_checkpoint_keeps_the_first_and_leaves_no_temp_file(tmp_path, monkeypatch):
    out, real_save, saves, first = tmp_path / "run", torch.save, [], {}

    def save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 1:
            return real_save(obj, f, *args, **kwargs)
        first["bytes"] = (out / "ckpt.pt").read_bytes()
        f.write(b"PK\x03\x04 a few bytes before the disk filled up")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(MIMFlowError) as error:
        train(_opts(out, steps=4))
    message = str(error.value)
    assert "\n" not in message and len(saves) == 2
    assert message.startswith(f"{out / 'ckpt.pt'}: cannot write (No space left on device)")
    assert "intact" in message
    assert (out / "ckpt.pt").read_bytes() == first["bytes"]
    assert load_checkpoint(out / "ckpt.pt")["step"] == 2
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch) -> Path:
    """A directory nothing can be created in: chmod 0o555, and for root (whom permissions do not stop) the same
    refusal from os.open and Path.mkdir, as the kernel would give a user."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        real_open, real_mkdir = os.open, Path.mkdir

        def inside(target) -> bool:
            return Path(target).absolute().parent.is_relative_to(ro)

        def refusing_open(target, flags, *args, **kwargs):
            if flags & os.O_CREAT and inside(target):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))
            return real_open(target, flags, *args, **kwargs)

        def refusing_mkdir(self, *args, **kwargs):
            if inside(self):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
        monkeypatch.setattr(Path, "mkdir", refusing_mkdir)
    yield ro
    ro.chmod(0o755)


@pytest.mark.parametrize("where", ["inside", "itself"])
def test_an_out_in_a_read_only_directory_is_one_line(read_only_dir, capsys, where):
    out = read_only_dir / "run" if where == "inside" else read_only_dir
    err = _cli_error(capsys, "--out", str(out), "--steps", "1", "--no-eval")
    assert f"--out {out}: cannot write there (Permission denied)" in err
    assert list(read_only_dir.iterdir()) == []


# -- a damaged checkpoint being resumed ----------------------------------------------------------------------
def _set(ckpt: dict, where: str, value) -> None:
    """Set ``ckpt["resume"]["epoch"]`` for where="resume.epoch"; value None deletes the entry."""
    *parents, key = where.split(".")
    for name in parents:
        ckpt = ckpt[name]
    if value is None:
        del ckpt[key]
    else:
        ckpt[key] = value


@pytest.mark.parametrize("where, value, message", [
    ("step", "2", "'step' must be a non-negative integer, not '2'"),  # the checkpoint loader's own check
    ("resume.epoch", "0", "resume.epoch is '0', not an integer >= 0"),
    ("resume.batch_in_epoch", 1.5, "resume.batch_in_epoch is 1.5, not an integer >= 0"),
    ("resume.ema_updates", None, "resume.ema_updates is None, not an integer >= 0"),
    ("resume.stage", 3, "resume.stage is 3, not a stage name"),
    ("resume.stage", "flow", "resume.stage is 'flow', none of this run's stages (joint)"),
    ("resume.optimizer", [1, 2], "resume.optimizer is [1, 2], not an optimizer state dict"),
    ("resume.optimizer", {"state": {}, "param_groups": []}, "resume.optimizer does not fit this run's parameters"),
    ("resume.rng_cpu", torch.zeros(3), "resume.rng_cpu is tensor([0., 0., 0.]), not a CPU generator state"),
    ("resume.train_seconds", "12", "resume.train_seconds is '12', not a number >= 0"),
    ("resume", "everything", "resume is 'everything', not a dict"),
    ("train.batch_size", "32", "train.batch_size is '32', not an integer >= 1"),
    ("train.lr", math.nan, "train.lr is nan, not a finite number > 0"),
    ("train.mask_ratio", None, "has no resume state"),
    ("ema", None, "ema weights are not a state dict"),
])
def test_a_damaged_resume_state_is_one_line_naming_the_entry(short_run, tmp_path, capsys, where, value, message):
    out = _copy(short_run, tmp_path / "run")
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    _set(ckpt, where, value)
    torch.save(ckpt, out / "ckpt.pt")
    before = (out / "ckpt.pt").read_bytes(), (out / "log.jsonl").read_bytes()
    err = _cli_error(capsys, "--out", str(out), "--resume", "--steps", "3", "--no-eval")
    assert f"{out / 'ckpt.pt'}: {message}" in err
    assert ((out / "ckpt.pt").read_bytes(), (out / "log.jsonl").read_bytes()) == before


def test_phase2_refuses_an_init_checkpoint_whose_train_record_has_a_string_for_a_number(short_run, tmp_path, capsys):
    ckpt = torch.load(short_run / "ckpt.pt", weights_only=True)
    ckpt["train"]["tokens"] = "16"
    torch.save(ckpt, tmp_path / "p1.pt")
    err = _cli_error(capsys, "--out", str(tmp_path / "gan"), "--phase", "2", "--init", str(tmp_path / "p1.pt"),
                     "--steps", "1", "--no-eval")
    assert f"{tmp_path / 'p1.pt'}: train.tokens is '16', not an integer >= 1" in err


def test_a_resume_whose_steps_end_before_the_checkpoint_is_refused(short_run, tmp_path, capsys):
    out = _copy(short_run, tmp_path / "run")
    before = (out / "ckpt.pt").read_bytes(), (out / "log.jsonl").read_bytes()
    err = _cli_error(capsys, "--out", str(out), "--resume", "--steps", "1")
    assert f"{out / 'ckpt.pt'}: is at step 2 already; --steps 1 would train nothing; give --steps > 2 " \
           "(or --steps 2 to evaluate it again)" in err
    assert ((out / "ckpt.pt").read_bytes(), (out / "log.jsonl").read_bytes()) == before


# -- a run that diverges -----------------------------------------------------------------------------------
def _diverge_at(monkeypatch, step: int, seen: dict | None = None, out: Path | None = None) -> None:
    """The training loss (and its rec_l2 term) is NaN at the ``step``-th step, as a diverged run's: its gradient
    makes the weights NaN too. ``seen["ckpt"]`` is what ``out/ckpt.pt`` held just before."""
    real, calls = TrainingLoss.__call__, []

    def diverging(self, *args, **kwargs):
        total, logs = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) != step:
            return total, logs
        if seen is not None and (out / "ckpt.pt").exists():
            seen["ckpt"] = (out / "ckpt.pt").read_bytes()
        return total * math.nan, {**logs, "rec_l2": math.nan}

    monkeypatch.setattr(TrainingLoss, "__call__", diverging)


@pytest.mark.parametrize("step, left", [
    (3, "the last checkpoint {ckpt} (step 2) is kept; lower --lr and train again in a new --out "
        "(--resume would repeat the same steps)"),
    (1, "no checkpoint was written; lower --lr and train again"),
])
def test_a_loss_that_becomes_nan_stops_the_run_at_that_step_and_keeps_the_last_checkpoint(
        tmp_path, capsys, monkeypatch, step, left):
    out, seen = tmp_path / "run", {}
    _diverge_at(monkeypatch, step, seen, out)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(out), "--steps", "6", "--ckpt-every", "2", "--log-every", "1",
              "--batch-size", "8", "--no-eval"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    line = (f"mimflow-lab: error: step {step}: grad_norm, loss, rec_l2 became NaN or Inf (the run diverged); "
            f"stopped without saving: {left.format(ckpt=out / 'ckpt.pt')}")
    assert err.endswith(f"\n{line}\n"), err  # after the progress bar's last line, on a line of its own
    logged = [r["step"] for _, r in read_records(out / "log.jsonl") if "loss" in r]
    assert logged == list(range(1, step))  # the diverged step is not logged
    assert not temp_files(out / "ckpt.pt")
    if step == 1:
        assert not (out / "ckpt.pt").exists()
        return
    assert (out / "ckpt.pt").read_bytes() == seen["ckpt"]  # byte for byte the step-2 checkpoint
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["step"] == 2 and nonfinite_weights(ckpt["model"]) is None and nonfinite_weights(ckpt["ema"]) is None


def test_weights_that_became_nan_with_a_finite_loss_are_never_saved(tmp_path, monkeypatch):
    out, real_update, updates = tmp_path / "run", EMA.update, []

    def update(self, model):
        real_update(self, model)
        updates.append(1)
        if len(updates) == 3:  # the EMA alone goes bad at step 3; every logged term stays finite
            next(v for v in self.shadow.values() if v.is_floating_point()).fill_(math.inf)

    monkeypatch.setattr(EMA, "update", update)
    with pytest.raises(MIMFlowError) as error:
        train(_opts(out, steps=6, batch_size=8))
    assert str(error.value).startswith("step 4: ema weights: 1 tensor(s) hold NaN or Inf (first: ")
    assert str(error.value).endswith(f"stopped without saving: the last checkpoint {out / 'ckpt.pt'} (step 2) is "
                                     "kept; lower --lr and train again in a new --out (--resume would repeat the "
                                     "same steps)")
    assert load_checkpoint(out / "ckpt.pt")["step"] == 2


def test_under_torchrun_a_term_that_only_one_rank_sees_diverge_stops_every_rank_at_that_step(tmp_path):
    """Rank 1 alone logs a NaN term (its loss and so every gradient stay finite): both ranks must stop at step 3
    with the one line, neither waiting in a collective for the other."""
    script = tmp_path / "diverge_on_rank_1.py"
    script.write_text(textwrap.dedent("""
        import math, os, sys
        from mimflow_core.losses import TrainingLoss
        from mimflow_lab.cli import main

        real, calls = TrainingLoss.__call__, []

        def diverging(self, *args, **kwargs):
            total, logs = real(self, *args, **kwargs)
            calls.append(1)
            if len(calls) == 3 and os.environ["RANK"] == "1":
                logs = {**logs, "bpd": math.nan}
            return total, logs

        TrainingLoss.__call__ = diverging
        main(sys.argv[1:])
    """))
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         "train", "--out", str(out), "--steps", "6", "--ckpt-every", "2", "--batch-size", "8", "--no-eval",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode != 0
    line = (f"mimflow-lab: error: step 3: bpd became NaN or Inf (the run diverged); stopped without saving: the last "
            f"checkpoint {out / 'ckpt.pt'} (step 2) is kept")
    assert proc.stderr.count(line) == 2, proc.stderr[-3000:]  # one line from each rank
    assert load_checkpoint(out / "ckpt.pt")["step"] == 2
