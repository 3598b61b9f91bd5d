"""benchmarks/checks/prewarmed.py: a script started as a fork of a process that imported it behaves as
`python script.py args` would, in the ways the tests and the faults check rely on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from benchmarks.checks import prewarmed

SCRIPT = """
import atexit, json, os, signal, sys, time
atexit.register(lambda: print("atexit ran", flush=True))
what = sys.argv[1]
if what == "report":
    print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": os.environ.get("PREWARMED_TEST"),
                      "path0": sys.path[0], "pid": os.getpid(), "extra_path": "/nowhere/x" in sys.path,
                      "torch_loaded": "torch" in sys.modules}))
    print("to stderr", file=sys.stderr)
    sys.exit(int(sys.argv[2]))
if what == "wait":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    print("waiting", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "folder" / "script.py"
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


def test_a_started_script_has_its_arguments_folder_environment_and_exit_code(script, tmp_path):
    env = {**os.environ, "PREWARMED_TEST": "yes", "PYTHONPATH": "/nowhere/x"}
    done = prewarmed.run(script, ["report", "3"], tmp_path, env, timeout=120)
    report = json.loads(done.stdout.splitlines()[0])
    assert done.returncode == 3 and done.stderr == "to stderr\n"
    assert report["argv"] == [str(script), "report", "3"] and report["cwd"] == str(tmp_path)
    assert report["env"] == "yes" and report["extra_path"] and report["path0"] == str(script.parent)
    assert report["pid"] != os.getpid() and report["torch_loaded"]  # its own process, the imports done
    assert done.stdout.splitlines()[-1] == "atexit ran"  # the interpreter's exit handlers run

    # `python -m script`: found through PYTHONPATH, sys.argv[0] its file, sys.path[0] the working folder.
    env["PYTHONPATH"] = str(script.parent)
    done = prewarmed.run(prewarmed.Module("script"), ["report", "0"], tmp_path, env, timeout=120)
    report = json.loads(done.stdout.splitlines()[0])
    assert done.returncode == 0 and report["argv"] == [str(script), "report", "0"] and report["path0"] == str(tmp_path)
    assert done.args[:3] == [sys.executable, "-m", "script"]


def test_a_started_script_takes_signals_and_is_killed_like_a_process(script, tmp_path):
    for signum, code in ((signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)):
        started = prewarmed.start(script, ["wait"], tmp_path, tmp_path / "log")
        assert started.wait_for_output("waiting", timeout=120) and started.poll() is None
        started.send_signal(signum)
        assert started.wait(timeout=60) == code == started.returncode
    with pytest.raises(subprocess.TimeoutExpired):
        prewarmed.run(script, ["wait"], tmp_path, timeout=1)

