"""``PidFile`` signals only the process it recorded, never another that got its number."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from deploy.local.process import PidFile, start_ticks


def test_a_live_process_is_named_by_its_pid_and_start_time(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = PidFile(tmp_path / "sleeper.pid")
        pid_file.write(proc.pid, sys.executable)
        assert pid_file.live_pid() == proc.pid
        assert pid_file.stop(timeout=5) is True
        assert proc.wait(5) is not None
        assert pid_file.live_pid() is None
        assert not pid_file.path.exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_running_the_same_program_is_not_ours(tmp_path: Path) -> None:
    # Another Python process that later got the recorded number: same name, another start
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = start_ticks(proc.pid)
        assert ticks is not None
        pid_file = PidFile(tmp_path / "service.pid")
        pid_file.path.write_text(
            f'{{"pid": {proc.pid}, "exe": "{Path(sys.executable).name}", "started": {ticks - 1}}}'
        )
        assert pid_file.live_pid() is None
        assert pid_file.stop(timeout=1) is False
        assert proc.poll() is None  # left alone
    finally:
        proc.kill()
        proc.wait()


def test_a_pid_file_of_another_program_or_garbage_names_nothing(tmp_path: Path) -> None:
    pid_file = PidFile(tmp_path / "x.pid")
    pid_file.path.write_text("not json")
    assert pid_file.live_pid() is None
    pid_file.write(1, "/usr/sbin/no-such-server")  # PID 1 lives, but runs something else
    assert pid_file.live_pid() is None


def test_start_ticks_of_a_name_with_spaces_and_parentheses() -> None:
    # the name field of /proc/<pid>/stat is "(comm)", and comm may hold ") " itself
    renamed = "import pathlib, sys, time; pathlib.Path('/proc/self/comm').write_text('a) b (c'); "
    renamed += "print(flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", renamed], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"\n"
        assert "(a) b (c)" in Path(f"/proc/{proc.pid}/stat").read_text()
        ticks = start_ticks(proc.pid)
        assert ticks is not None
        assert ticks > 0
        assert ticks == int(Path(f"/proc/{proc.pid}/stat").read_text().split()[23])
    finally:
        proc.kill()
        proc.wait()
