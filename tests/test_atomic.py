"""Outputs appear complete or not at all, also when the writing process is killed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from t2i.utils.atomic import atomic_dir, atomic_path, atomic_write_json

WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from t2i.data.images import save_png
from t2i.utils.atomic import atomic_dir
with atomic_dir(sys.argv[1]) as out:
    for i in range(1000):
        save_png(np.zeros((8, 8, 3), np.uint8), out / f"{i:06d}.png")
        (Path(sys.argv[2])).write_text(str(i))
        time.sleep(0.01)
"""


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "metrics.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_previous_version_until_success(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise ValueError
    assert json.loads(target.read_text()) == {"v": 1}


def test_killed_sampler_leaves_no_png_under_the_output(tmp_path):
    out, progress = tmp_path / "samples" / "test", tmp_path / "progress"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(progress)])
    deadline = time.time() + 60
    while time.time() < deadline and not (progress.exists() and int(progress.read_text() or 0) >= 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # the PNGs written so far sit in a hidden temporary folder
    leftovers = list(out.parent.glob(".test.tmp-*"))
    assert leftovers and any(leftovers[0].glob("*.png"))
    with atomic_dir(out) as new:  # the rerun cleans the killed job's leftovers
        (new / "index.jsonl").write_text("")
    assert out.is_dir() and not list(out.parent.glob(".test.tmp-*"))
