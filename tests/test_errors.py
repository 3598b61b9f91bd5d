"""Bad input to train.py and sample.py ends in one `error:` line (and at most a hint), a non-zero exit
status and no traceback; --debug or BIGGAN_SMYRF_DEBUG=1 shows the traceback; bugs keep theirs."""
from __future__ import annotations

import importlib.util
import io
import os
import shlex
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from biggan_smyrf import cli as train_cli
from biggan_smyrf.commands import REPO_ROOT, script_command, tensorboard_command
from biggan_smyrf.errors import DEBUG_ENV, reported_errors
from biggan_smyrf.inference import cli as sample_cli

from benchmarks.checks import prewarmed
from conftest import DEMO, FAST, ROOT

NOT_A_CHECKPOINT = "this is not a checkpoint\n"


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def fails_cleanly(main, argv, capsys, *expected: str) -> list[str]:
    """Runs main(argv), which must exit non-zero after at most two lines (the first `error: ...`)
    containing every `expected` text, and no traceback. Returns those lines."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    code = exit_info.value.code
    assert code not in (0, None)
    # sys.exit("error: ...") leaves the printing to the interpreter, which an in-process call skips.
    lines = stderr_lines(capsys) + (code.splitlines() if isinstance(code, str) else [])
    assert lines and not any("Traceback" in line for line in lines), lines
    tail = lines[next(i for i, line in enumerate(lines) if line.startswith("error: ")):]
    assert len(tail) <= 2, lines
    for text in expected:
        assert text in "\n".join(tail), (text, tail)
    return tail


def train_args(*args: str) -> list[str]:
    return ["--config", str(DEMO), *FAST, "--model.loop.max_g_iters=1", *args]


def test_missing_empty_and_non_zip_data_roots(run_dir, capsys):
    fails_cleanly(train_cli.main, train_args("--data.root", "nowhere"), capsys, "dataset not found: nowhere", "--data.root")
    (run_dir / "empty").mkdir()
    fails_cleanly(train_cli.main, train_args("--data.root", "empty"), capsys, "no images found in empty", ".jpg")
    (run_dir / "corrupt.zip").write_text("PK but not really a zip")
    fails_cleanly(train_cli.main, train_args("--data.root", "corrupt.zip"), capsys, "corrupt.zip is a file but not a readable .zip")


def test_zip_with_damaged_members(run_dir, capsys):
    png = io.BytesIO()
    Image.new("RGB", (40, 40), (255, 0, 0)).save(png, "PNG")
    with zipfile.ZipFile(run_dir / "faces.zip", "w") as archive:
        archive.writestr("a.png", png.getvalue())
    data = bytearray((run_dir / "faces.zip").read_bytes())
    data[60:80] = bytes(20)  # inside a.png's data: its CRC no longer matches
    (run_dir / "faces.zip").write_bytes(bytes(data))
    fails_cleanly(train_cli.main, train_args("--data.root", "faces.zip"), capsys,
                  "none of the 1 files in faces.zip could be read as an image: a.png (BadZipFile")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_accelerator_without_a_gpu(run_dir, capsys):
    fails_cleanly(train_cli.main, train_args("--trainer.accelerator", "gpu"), capsys,
                  "--trainer.accelerator gpu needs a CUDA", "--trainer.accelerator cpu")


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed")
def test_tpu_accelerator_without_torch_xla(run_dir, capsys):
    fails_cleanly(train_cli.main, train_args("--trainer.accelerator", "tpu"), capsys, "needs torch_xla", "cpu")


def test_text_file_as_checkpoint(run_dir, capsys):
    (run_dir / "x.ckpt").write_text(NOT_A_CHECKPOINT)
    fails_cleanly(train_cli.main, train_args("--ckpt_path", "x.ckpt"), capsys, "x.ckpt is not a PyTorch checkpoint")
    fails_cleanly(train_cli.main, train_args("--ckpt_path", "missing.ckpt"), capsys, "checkpoint not found: missing.ckpt")
    for text in (NOT_A_CHECKPOINT, "hello world", ""):
        (run_dir / "x.ckpt").write_text(text)
        fails_cleanly(sample_cli.main, ["--ckpt", "x.ckpt", "--out", "out"], capsys, "x.ckpt is not a PyTorch checkpoint")


def test_unknown_options_name_the_closest_valid_one(run_dir, capsys):
    tail = fails_cleanly(train_cli.main, train_args("--model.loop.max_g_itrs=3"), capsys,
                         "unknown option --model.loop.max_g_itrs; did you mean --model.loop.max_g_iters?")
    assert tail[1] == f"all options: {script_command('train.py', 'fit', '--help')}"
    fails_cleanly(train_cli.main, train_args("--trainer.acelerator", "cpu"), capsys, "did you mean --trainer.accelerator?")
    fails_cleanly(train_cli.main, ["validat", *train_args()], capsys, "unexpected argument 'validat'; did you mean validate?")
    fails_cleanly(sample_cli.main, ["--ckpt", "x", "--out", "o", "--q-clustr-size", "8"], capsys,
                  "unknown option --q-clustr-size; did you mean --q-cluster-size?", "sample.py --help")


def test_the_help_command_in_the_tip_runs_as_printed(run_dir, capsys):
    command = script_command("train.py", "fit", "--help")
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(shlex.split(command)[2:])
    assert exit_info.value.code == 0 and "--model.loop.max_g_iters" in capsys.readouterr().out
    assert Path(shlex.split(command)[0]).samefile(sys.executable)


def test_yaml_errors_name_the_file_and_line(run_dir, capsys):
    (run_dir / "broken.yaml").write_text("model:\n  loop: {max_g_iters: 3\n  foo: 1\n")
    fails_cleanly(train_cli.main, train_args("--config", "broken.yaml"), capsys, "broken.yaml, line 3", "YAML syntax")
    (run_dir / "typo.yaml").write_text("model:\n  loop: {max_g_itrs: 3}\n")
    fails_cleanly(train_cli.main, train_args("--config", "typo.yaml"), capsys,
                  "unknown config key model.loop.max_g_itrs in typo.yaml; did you mean model.loop.max_g_iters?")


def test_debug_flag_and_environment_show_the_traceback(run_dir, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        train_cli.main(train_args("--data.root", "nowhere", "--debug"))
    (run_dir / "x.ckpt").write_text(NOT_A_CHECKPOINT)
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        sample_cli.main(["--ckpt", "x.ckpt", "--out", "out"])


def test_bugs_keep_their_traceback():
    """A ValueError from outside biggan_smyrf (here: int()) is not our message to shorten."""
    with pytest.raises(ValueError, match="invalid literal"):
        with reported_errors(debug=False):
            int("x")


@pytest.mark.slow
def test_train_py_prints_no_traceback_unless_asked(tmp_path):
    """As a process (prewarmed, helpers.train): an exception that escaped would print its traceback."""
    args = train_args("--data.root", "nowhere")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(DEBUG_ENV, None)
    quiet = prewarmed.run(ROOT / "train.py", args, tmp_path, env, timeout=300)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1].startswith("error: dataset not found: nowhere")
    loud = prewarmed.run(ROOT / "train.py", [*args, "--debug"], tmp_path, env, timeout=300)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "FileNotFoundError" in loud.stderr


def test_printed_commands_use_this_interpreter(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    python, script, *args = shlex.split(script_command("sample.py", "--ckpt", "a b.ckpt"))
    assert Path(python).samefile(sys.executable) and script == "sample.py" and args == ["--ckpt", "a b.ckpt"]
    program = shlex.split(tensorboard_command("checkpoints/demo/tb"))
    assert program[-2:] == ["--logdir", "checkpoints/demo/tb"]
    beside = Path(sys.executable).parent / "tensorboard"
    if beside.is_file():
        assert Path(program[0]).samefile(beside)
    else:
        assert Path(program[0]).samefile(sys.executable) and program[1:3] == ["-m", "tensorboard.main"]


class RunsCode:
    """Unpickling this runs a shell command: a malicious checkpoint."""

    def __reduce__(self):
        return os.system, ("touch pwned",)


def checkpoint_of(path: Path, **generator) -> Path:
    """A stand-in for a train.py checkpoint: what is read before any weights are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hparams = {"generator": {"resolution": 32, "ch": 8, **generator}, "loop": {"max_g_iters": 2}}
    torch.save({"biggan_smyrf": {"g_iters": 2}, "hyper_parameters": hparams, "state_dict": {}}, path)
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_nonpositive_learning_rates_and_batch_sizes(run_dir, capsys):
    for option in ("--model.optim.lr_g", "--model.optim.lr_d"):
        for value in ("-1", "0"):
            fails_cleanly(train_cli.main, train_args(option, value), capsys, f"{option[8:]} must be > 0")
    for value in ("-1", "0"):
        fails_cleanly(train_cli.main, train_args("--data.batch_size", value), capsys, "batch_size must be at least 1")
    assert not (run_dir / "checkpoints").exists()


def test_unsafe_foreign_and_torn_checkpoints_are_refused_in_one_line(run_dir, capsys):
    torch.save({"x": RunsCode()}, run_dir / "evil.ckpt")
    torch.save({"weights": torch.zeros(3)}, run_dir / "foreign.pt")
    torch.save({"weights": torch.zeros(10000)}, run_dir / "whole.ckpt")
    run = run_dir / "checkpoints" / "r"
    run.mkdir(parents=True)
    (run / "last.ckpt").write_bytes((run_dir / "whole.ckpt").read_bytes()[:20000])  # cut short
    for subcommand in ("fit", "validate"):
        for path in ("evil.ckpt", "last"):
            if path == "last":
                (run / "last.ckpt").write_bytes((run_dir / "evil.ckpt").read_bytes())
            tail = fails_cleanly(train_cli.main, [subcommand, *train_args("--run=r", "--ckpt_path", path)], capsys,
                                 "is refused: loading it could run code", "posix.system")
            assert "weights_only=False" not in "\n".join(tail)
        fails_cleanly(train_cli.main, [subcommand, *train_args("--ckpt_path", "foreign.pt")], capsys,
                      "foreign.pt is not a train.py checkpoint")
    (run / "last.ckpt").write_bytes((run_dir / "whole.ckpt").read_bytes()[:20000])
    fails_cleanly(train_cli.main, train_args("--run=r", "--ckpt_path", "last"), capsys,
                  "last.ckpt is not a PyTorch checkpoint")
    assert not (run_dir / "pwned").exists()


def test_resume_with_another_architecture_is_refused_and_changes_nothing(run_dir, capsys):
    run = run_dir / "checkpoints" / "r"
    checkpoint_of(run / "last.ckpt")
    (run / "tb").mkdir()
    (run / "tb" / "config.yaml").write_text("the run's own config\n")
    before = files_of(run)
    for path in ("last", str(run / "last.ckpt")):
        fails_cleanly(train_cli.main, train_args("--run=r", "--ckpt_path", path, "--model.generator.ch", "32"), capsys,
                      "--model.generator.ch 32 differs from the run being resumed (8 in")
    (run_dir / "wide.yaml").write_text("model:\n  generator: {ch: 16}\n")
    fails_cleanly(train_cli.main, train_args("--config", "wide.yaml", "--run=r", "--ckpt_path", "last"), capsys,
                  "--model.generator.ch 16 differs")
    assert files_of(run) == before


def test_ckpt_path_last_without_a_checkpoint_lists_the_runs(run_dir, capsys):
    checkpoint_of(run_dir / "checkpoints" / "demo" / "last.ckpt")
    checkpoint_of(run_dir / "checkpoints" / "other" / "last.ckpt")
    fails_cleanly(train_cli.main, train_args("--run=dmeo", "--ckpt_path", "last"), capsys,
                  "checkpoints/dmeo/last.ckpt does not exist", "demo, other")
    assert not (run_dir / "checkpoints" / "dmeo").exists()


def test_read_only_or_full_output_folder_is_refused_before_training(run_dir, capsys, monkeypatch):
    (run_dir / "checkpoints").symlink_to("/proc/self")  # a folder no one may create runs in
    fails_cleanly(train_cli.main, train_args("--run=r"), capsys, "cannot write to checkpoints/r")
    (run_dir / "checkpoints").unlink()
    monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=1000))
    fails_cleanly(train_cli.main, train_args("--run=r"), capsys, "free on the disk of checkpoints/r", "checkpoint needs")
    assert not (run_dir / "checkpoints").exists()


def test_a_failed_start_leaves_no_run_folder(run_dir, capsys):
    """Metrics without their weights fail in setup, after Lightning made its logger."""
    with pytest.raises(SystemExit, match="metrics.weights_path=missing.pth does not exist"):
        train_cli.main(train_args("--run=r", "--model.metrics.enabled=true", "--model.metrics.weights_path=missing.pth"))
    assert not (run_dir / "checkpoints" / "r").exists()
