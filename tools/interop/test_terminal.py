"""`coffer` on a real terminal (a pseudo-terminal): the no-echo passphrase prompt and the progress bar.

Drives the real binary (COFFER_BIN) with Python's pty module; no COFFER_PASSPHRASE in the environment. The prompt
and the bar also through `coffer-run` and `coffer runner`, whose fork has no controlling terminal of its own.
"""
import json
import os
import re
import pty
import select
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

from test_interop import COFFER

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))
import cofferlib  # noqa: E402

PASSPHRASE = b"typed at the prompt"


def run_on_terminal(args, cwd, answers=(), timeout=30, program=COFFER, at_prompt=lambda: None, **extra):
    """Runs coffer (or `program`) with stdin, stdout and stderr on one pty, `extra` added to its environment; answers
    each prompt in turn, calling `at_prompt` first. Returns (status, screen)."""
    env = {k: v for k, v in os.environ.items() if k != "COFFER_PASSPHRASE"} | extra
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execve(program, [program, *args], env)
    screen, pending, deadline = b"", list(answers), time.time() + timeout
    answered = 0  # screen length when the last answer was sent: only a prompt printed after it is answered
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            screen += data
            if pending and screen[answered:].rstrip().endswith(b":"):
                at_prompt()
                os.write(fd, pending.pop(0) + b"\n")
                answered = len(screen)
    finished, status = os.waitpid(pid, os.WNOHANG)
    while finished == 0 and time.time() < deadline + 5:  # the terminal closed a moment before the process exits
        time.sleep(0.01)
        finished, status = os.waitpid(pid, os.WNOHANG)
    if finished == 0:  # still waiting for input after the deadline: fail, never hang
        os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
        return -9, screen.decode(errors="replace")
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


LAUNCHER = os.path.join(os.path.dirname(COFFER), "coffer-run")


def runner_forks(runner):
    """The runner's children: the commands it runs (it has one thread, so its task's children are all of them)."""
    return open(f"/proc/{runner}/task/{runner}/children").read().split()


@pytest.fixture
def runner():
    """A `coffer runner` of this test's own: (the environment to run under, its socket, its pid). Its socket is under
    /tmp, since pytest's tmp_path is too long for sun_path; at the end, it and its forks are ended."""
    runtime = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    try:
        env = {k: v for k, v in os.environ.items() if k != "COFFER_PASSPHRASE"} | {"XDG_RUNTIME_DIR": runtime}
        socket, pid = cofferlib.start_service(COFFER, "runner", env)
        yield env, socket, pid
        for fork in runner_forks(pid):
            os.kill(int(fork), 9)
        os.kill(pid, 15)
    except (ProcessLookupError, FileNotFoundError):  # the runner (or a fork) ended first
        pass
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def unseal_through_runner(tmp_path, runner):
    """alice's key (PASSPHRASE) and plain.cfs sealed to her in tmp_path: (the launcher's command line that unseals it
    to tmp_path/out, its environment, the runner's pid)."""
    env, socket, pid = runner
    cofferlib.keygen(COFFER, tmp_path / "alice", env=dict(env, COFFER_PASSPHRASE=PASSPHRASE.decode()))
    (tmp_path / "plain").write_bytes(b"weights")
    cofferlib.check(COFFER, "seal", "--to", tmp_path / "alice.pub", "-o", tmp_path / "plain.cfs", tmp_path / "plain", env=env)
    command = [LAUNCHER, "unseal", "--identity", str(tmp_path / "alice.key"), "-o", str(tmp_path / "out"), str(tmp_path / "plain.cfs")]
    return command, dict(env, COFFER_RUNNER_SOCK=socket), pid


def test_prompt_asks_twice_without_echo_and_the_key_opens(tmp_path, **through):
    status, screen = run_on_terminal(["keygen", "--out", "keys/carol", "--kdf-ops", "1", "--kdf-memory", "64"], tmp_path,
                                     answers=[PASSPHRASE, PASSPHRASE], **through)
    assert status == 0, screen
    assert "Passphrase for the new identity:" in screen and "Repeat passphrase:" in screen
    assert PASSPHRASE.decode() not in screen  # echo was off
    (tmp_path / "plain").write_bytes(os.urandom(5 << 20))
    status, screen = run_on_terminal(["seal", "--to", "keys/carol.pub", "-o", "plain.cfs", "plain"], tmp_path, **through)
    assert status == 0, screen
    assert "sealing" in screen and "5.0 MiB" in screen  # progress bar on a terminal
    status, screen = run_on_terminal(["unseal", "--identity", "keys/carol.key", "-o", "out", "plain.cfs"], tmp_path,
                                     answers=[PASSPHRASE], **through)
    assert status == 0, screen
    assert (tmp_path / "out").read_bytes() == (tmp_path / "plain").read_bytes()


def test_the_prompt_and_the_bar_work_through_the_runner(tmp_path, runner):
    _, socket, pid = runner
    prompted_in = []

    def runner_children():  # at each prompt: the command asking is the runner's fork, not a coffer the launcher ran
        prompted_in.append(runner_forks(pid))
    work = tmp_path / "work"
    work.mkdir()
    test_prompt_asks_twice_without_echo_and_the_key_opens(work, program=LAUNCHER, at_prompt=runner_children, COFFER_RUNNER_SOCK=socket)
    assert len(prompted_in) == 3 and all(len(children) == 1 for children in prompted_in), prompted_in


def test_mismatched_repeat_is_refused(tmp_path):
    status, screen = run_on_terminal(["keygen", "--out", "keys/dave"], tmp_path, answers=[b"one", b"two"])
    assert status == 1
    assert "the two passphrases differ" in screen
    assert not (tmp_path / "keys" / "dave.key").exists()


def test_training_shows_a_bar_per_epoch_with_loss_and_epsilon(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    recipe = json.loads(open(os.path.join(root, "examples", "randhie.json")).read())
    recipe.update(data=os.path.join(root, "data", "randhie.csv"), epochs=2, fine_tune_epochs=1, trunk=[16])
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    status, screen = run_on_terminal(["train", "--config", "recipe.json", "--out", "ckpt"], tmp_path, timeout=120)
    assert status == 0, screen
    assert re.search(r"train epoch 1/2 \[[#.]{20}\] step \d+/\d+: loss visits [\d.]+, health [\d.]+, limited [\d.]+, epsilon [\d.]+", screen), screen
    for line in ("train epoch 1/2: loss", "train epoch 2/2: loss", "fine-tune epoch 1/1: loss"):
        assert line in screen, screen


def test_a_launcher_in_the_background_leaves_the_terminal_to_job_control(tmp_path, unseal_through_runner):
    """A background job's prompt is stopped by the terminal (SIGTTOU, SIGTTIN), as coffer's own would be: the runner's
    fork, which has no controlling terminal, would have read the next line typed at the shell instead."""
    command, env, runner = unseal_through_runner
    pid, fd = pty.fork()
    if pid == 0:  # a shell's stand-in: the terminal's foreground, starting a job in a group of its own
        job = os.fork()
        if job == 0:
            os.setpgid(0, 0)
            os.execve(command[0], command, env)
        _, status = os.waitpid(job, os.WUNTRACED)
        os.write(1, b"job stopped\n" if os.WIFSTOPPED(status) else b"job ended %d\n" % status)
        if os.WIFSTOPPED(status):
            os.kill(job, 9)
        os._exit(0)
    screen, deadline = b"", time.time() + 30
    while b"job " not in screen and time.time() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                screen += os.read(fd, 4096)
            except OSError:
                break
    forks = runner_forks(runner)
    if b"job " not in screen:  # the job kept waiting for a line: end the stand-in (its job ends with the runner's fork)
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert b"job stopped" in screen, screen
    assert not (tmp_path / "out").exists()
    assert forks == [], "the runner's fork was reading the terminal"


def test_a_prompt_waits_while_its_launcher_is_in_the_background(tmp_path, unseal_through_runner):
    """^Z and `bg` on a prompting command: the line typed at the shell meanwhile is the shell's, not the runner's fork's
    (which has no controlling terminal to stop it); back in the foreground, the prompt takes the next line."""
    command, env, _ = unseal_through_runner
    control, told = os.pipe()  # the test tells the shell's stand-in when to move the job
    shell_read, shell_saw = os.pipe()  # what the stand-in read from the terminal, as a shell would
    pid, fd = pty.fork()
    if pid == 0:  # a shell's stand-in: it gives the terminal to the job, takes it back (bg), then gives it again (fg)
        go_r, go_w = os.pipe()
        job = os.fork()
        if job == 0:
            os.setpgid(0, 0)
            os.read(go_r, 1)
            os.execve(command[0], command, env)
        os.setpgid(job, job)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        os.tcsetpgrp(0, job)
        os.write(go_w, b"x")
        os.read(control, 1)
        os.tcsetpgrp(0, os.getpgrp())
        if select.select([0], [], [], 5)[0]:
            os.write(shell_saw, os.read(0, 4096))
        os.close(shell_saw)
        os.read(control, 1)
        os.tcsetpgrp(0, job)
        os.killpg(job, signal.SIGCONT)  # fg
        _, status = os.waitpid(job, 0)
        os._exit(os.waitstatus_to_exitcode(status))
    os.close(shell_saw)
    screen, deadline = b"", time.time() + 30
    while b"Passphrase for" not in screen and time.time() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            screen += os.read(fd, 4096)
    assert b"Passphrase for" in screen, screen
    os.write(told, b"b")
    time.sleep(0.5)
    os.write(fd, b"typed at the shell\n")
    saw = os.read(shell_read, 4096)
    assert saw == b"typed at the shell\n", f"the job took the shell's line: {saw}"
    os.write(told, b"f")
    time.sleep(0.3)
    os.write(fd, PASSPHRASE + b"\n")
    while time.time() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                screen += os.read(fd, 4096)
            except OSError:
                break
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
    assert (tmp_path / "out").read_bytes() == b"weights", screen
