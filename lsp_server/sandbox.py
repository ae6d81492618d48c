"""Running an untrusted Python program (a model's HumanEval completion and its tests) inside bubblewrap.

In: the program's text and its ``Limits``. Out: a ``Result`` - ``passed``, ``failed`` or ``timeout``, with the
exit status and the tails of its output. ``check()`` says, before a long run, whether this machine can confine
programs at all, and how to fix it when it cannot; ``run(..., unconfined=True)`` is the explicit way around it
(``codellama-lsp eval --unsafe-no-sandbox``), never taken silently.

The program is model-written code, so it is treated as hostile. The confinement is bubblewrap's (``bwrap``,
Debian's ``bubblewrap``), the sandbox Flatpak uses, not a hand-written one; this module only chooses its
arguments:

- **Namespaces.** New user, mount, pid, ipc, network, uts and cgroup namespaces (``--unshare-all``), so the
  program sees its own processes only (it can neither signal nor trace anything outside, nor read another
  process's ``/proc/<pid>/environ``: ``--proc /proc`` is a fresh ``/proc`` of the new pid namespace), has a
  network of one loopback device that reaches nothing (nor the host's abstract Unix sockets, which belong to
  the network namespace), and cannot create user namespaces of its own (``--disable-userns``). bwrap runs
  with an empty environment and the program with a minimal one (``--clearenv``): no secret of this process
  (an ``OPENAI_API_KEY`` of ``eval --engine openai``) is anywhere in the sandbox.
- **File system.** A fresh root holding only what the interpreter needs, read-only: ``/usr`` (with the
  ``/bin``, ``/lib*`` links or directories as the host has them), the Python installation (``sys.base_prefix``)
  and the virtual environment (``sys.prefix``, whose site-packages the program may import). No ``/etc``,
  ``/home``, ``/root`` (beyond the path to a Python installed there), no working tree, no host ``/tmp``, so
  no file-system Unix socket of a host service. Writable: an empty ``/tmp`` (the working directory, ``HOME``
  and ``TMPDIR``; 64 MiB) and ``/dev/shm`` (1 MiB), size-limited tmpfs; the root is remounted read-only.
- **Limits.** bwrap's pid namespace has bwrap as its init. When the program exits, or when the wall clock
  runs out, this module kills that init (through a pidfd from bwrap's ``--info-fd``) and waits for it: the
  kernel kills everything left in the namespace first, so a ``fork(); setsid(); fork()`` grandchild is gone
  when ``run`` returns (bwrap itself exits as soon as the program does, before that clean-up). Inside,
  before the program starts, the harness sets rlimits: ``RLIMIT_NPROC`` (tasks, threads included),
  ``RLIMIT_AS`` per address space, ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (also the size of its output),
  ``RLIMIT_NOFILE`` and no core dumps.
  The memory of the whole tree is bounded by ``processes x memory per process`` plus the two tmpfs sizes:
  ``RLIMIT_NPROC`` counts the tasks of one uid *in one user namespace* (Linux 5.14+ ucounts), and the program
  runs in a user namespace of its own in which its uid has no other process, so the count starts at the
  program itself and is not shared with anything outside (nor with a concurrent run). ``Limits.memory_mb``
  is the whole tree's budget; each process gets ``memory_mb / processes``. (A memory cgroup would bound the
  tree directly; it needs a delegated cgroup, which an ordinary user on an ordinary machine does not have.)
- **As root.** The kernel never enforces ``RLIMIT_NPROC`` for uid 0 (``INIT_USER``), and a user namespace
  made by root maps the sandbox's uid back to 0. So when this process is root, an outer bwrap builds the
  view and the namespaces without a user namespace, ``setpriv`` drops to ``nobody`` (no groups, no
  capabilities, an empty bounding set), and an inner bwrap, now unprivileged, puts the program into a fresh
  user namespace. Nothing of the program then runs as root, in any namespace.
- **The result.** A program passes when it *returns*: the harness prints a per-run random nonce after the
  program's last statement (``check(candidate)``) completed, and only an exit status of 0 with that nonce as
  the last line of stdout counts. ``sys.exit(0)``, ``exit(0)``, ``raise SystemExit``, ``os._exit(0)`` or a
  signal inside the function then fail, as does a program printing a constant "passed" line. The nonce is
  in the harness's memory, in the program's own process: a program written to read this harness's frames
  could still forge it; confinement, not the score, is what stands between such a program and the machine.

If bwrap is missing or cannot create namespaces here (a container without user namespaces, Ubuntu's
AppArmor restriction), ``check`` raises ``SandboxError`` with the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import ServerError

# Where bwrap and setpriv are looked up (tests point BWRAP at a stand-in to see the refusal).
BWRAP: str | None = shutil.which("bwrap")
SETPRIV: str | None = shutil.which("setpriv")
NOBODY = 65534  # the sandbox's uid and gid, inside and (as root) outside
TAIL = 4096  # bytes of stdout and stderr a Result keeps

HOW_TO_FIX = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and allow user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; on Ubuntu 24.04+ "
    "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap; in Docker, run the "
    "container with --security-opt seccomp=unconfined --security-opt apparmor=unconfined, or as a root with "
    "CAP_SYS_ADMIN), or pass --unsafe-no-sandbox to run the test programs unconfined"
)


class SandboxError(ServerError):
    """bubblewrap is missing or cannot confine programs on this machine (the message says how to fix it)."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock; everything in the sandbox is killed at the end
    memory_mb: int = 1024  # the whole tree's address space: memory_mb / processes per process
    processes: int = 4  # tasks (processes and threads) the program may have at once, its own included
    file_mb: int = 16  # the largest file it may write, stdout and stderr included
    tmp_mb: int = 64  # /tmp (its working directory); /dev/shm gets 1 MiB
    open_files: int = 64

    def __post_init__(self) -> None:
        if self.processes < 1 or self.memory_mb // self.processes < 32:
            raise ValueError(f"expected at least 1 process and 32 MiB per process, got {self}")


@dataclass(frozen=True)
class Result:
    status: str  # "passed", "failed" or "timeout"
    exit_code: int | None  # None after a timeout
    stdout: str  # its last TAIL bytes, the nonce line removed
    stderr: str  # its last TAIL bytes

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# The harness inside the sandbox: read the nonce and the program from stdin, set the limits, run the program
# as __main__, and print the nonce only if it returned. It runs as "python -I -B -c", so no PYTHON* variable,
# user site or .pyc writes; argv: memory per process, tasks, CPU seconds, file size, open files (bytes/counts).
_HARNESS = r"""
import os, resource, sys
def _harness():
    mem, nproc, cpu, fsize, nofile = (int(a) for a in sys.argv[1:6])
    data = sys.stdin.buffer.read()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    nonce, _, code = data.partition(b"\n")
    for what, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_CPU, cpu),
                        (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_CORE, 0)):
        if value or what != resource.RLIMIT_NPROC:
            resource.setrlimit(what, (value, value))
    sys.argv = ["program.py"]
    exec(compile(code, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, b"\n" + nonce + b"\n")
    os._exit(0)
_harness()
"""


def _python() -> tuple[str, list[Path]]:
    """The interpreter to run inside (this one, through the virtual environment when there is one) and the
    directories it needs besides /usr, resolved (a symlinked .venv is bound where it really is)."""
    prefix = Path(sys.prefix).resolve()
    exe = Path(sys.executable)
    try:
        inside = prefix / Path(sys.executable).relative_to(sys.prefix)
    except ValueError:
        inside = exe.resolve()
    roots = {prefix, Path(sys.base_prefix).resolve(), exe.resolve().parent.parent}
    # /usr is bound whole; a root inside another root comes with it
    return str(inside), sorted(r for r in roots if not any(_under(r, o) for o in roots - {r} | {Path("/usr")}))


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _view(roots: list[Path], limits: Limits) -> list[str]:
    """bwrap arguments for the file system: read-only /usr and interpreter, fresh /proc, /dev, /tmp."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):  # merged-/usr links, or real directories
        p = Path("/", name)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "1777", "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp"]
    args += ["--perms", "1777", "--size", str(1 << 20), "--tmpfs", "/dev/shm"]
    made: set[Path] = set()
    for root in roots:  # after /tmp's tmpfs, so that a virtual environment under /tmp is not hidden by it
        # bwrap creates missing parents 0700 (as root): make them traversable for the unprivileged program
        for parent in reversed(root.parents):
            if parent not in made and str(parent) not in ("/", "/tmp"):
                args += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        args += ["--ro-bind", str(root), str(root)]
    args += ["--remount-ro", "/", "--chdir", "/tmp", "--hostname", "sandbox", "--clearenv"]
    for k, v in (("PATH", "/usr/bin:/bin"), ("HOME", "/tmp"), ("TMPDIR", "/tmp"), ("LANG", "C.UTF-8")):
        args += ["--setenv", k, v]
    return args


def _command(limits: Limits, info_fd: int, unconfined: bool) -> list[str]:
    python, roots = _python()
    per_process = (limits.memory_mb // limits.processes) << 20
    harness = [
        python,
        "-I",
        "-B",
        "-c",
        _HARNESS,
        str(per_process),
        # unprivileged, bwrap's own pid 1 is in the program's user namespace and counts (measured: see the tests);
        # unconfined, the count would be all of this user's processes: 0 leaves it alone
        str(0 if unconfined else limits.processes + (0 if os.geteuid() == 0 else 1)),
        str(int(limits.timeout_s) + 1),
        str(limits.file_mb << 20),
        str(limits.open_files),
    ]
    if unconfined:
        return harness
    if BWRAP is None:
        raise SandboxError(f"expected bubblewrap's bwrap on PATH, got none: {HOW_TO_FIX}")
    common = ["--die-with-parent", "--new-session", "--info-fd", str(info_fd)]
    if os.geteuid() != 0:
        ids = ["--uid", str(NOBODY), "--gid", str(NOBODY)]
        return [BWRAP, "--unshare-all", "--unshare-user", "--disable-userns", *ids, *common, *_view(roots, limits), *harness]
    if SETPRIV is None:
        raise SandboxError("expected util-linux's setpriv on PATH (as root, the sandbox drops to nobody with it), got none")
    # root: the view and namespaces first, then nobody, then a user namespace of nobody's own (see the docstring)
    outer = [BWRAP, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    outer += [*common, "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", *_view(roots, limits)]
    drop = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
    inner = [BWRAP, "--unshare-user", "--disable-userns", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    inner += ["--dev-bind", "/", "/", "--die-with-parent", "--chdir", "/tmp"]
    return [*outer, *drop, "--", *inner, *harness]


def _tail(f: IO[bytes]) -> bytes:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - TAIL))
    return f.read()


def _init_pidfd(info_r: int, deadline: float) -> int | None:
    """A pidfd of the sandbox's pid-namespace init, from bwrap's ``--info-fd`` (None if bwrap failed first).

    Opened while bwrap, its parent, runs the program, so the pid is still that init's. bwrap itself exits as
    soon as the program does, before its init has killed what the program left (and does so only because
    ``--die-with-parent`` then kills it): the pidfd is how a run waits for that.
    """
    buf = b""
    while b"}" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([info_r], [], [], left)[0]:
            return None
        chunk = os.read(info_r, 4096)
        if not chunk:  # bwrap closed it without a word: it could not start
            return None
        buf += chunk
    try:
        return os.pidfd_open(int(json.loads(buf[: buf.index(b"}") + 1])["child-pid"]))
    except (OSError, ValueError, KeyError):
        return None


def _end(proc: subprocess.Popen[bytes], pidfd: int | None) -> None:
    """Kill the namespace's init and wait until it is gone: the kernel has then killed and reaped everything
    in the namespace (an init exits only after its namespace is empty). Then bwrap, if it still runs."""
    if pidfd is not None:
        try:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            select.select([pidfd], [], [], 30)  # readable once it exited
        finally:
            os.close(pidfd)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(program: str, limits: Limits | None = None, unconfined: bool = False) -> Result:
    """Run ``program`` (Python source) confined as the module docstring says; see ``Result``.

    ``unconfined`` runs it as a plain child process (same limits and scoring, but it can read and write
    what this user can, and reach the network): only for an explicit ``--unsafe-no-sandbox``.
    """
    limits = limits or Limits()
    nonce = secrets.token_hex(16).encode()
    info_r, info_w = os.pipe()
    try:
        cmd = _command(limits, info_w, unconfined)
        with contextlib.ExitStack() as stack:
            fin, fout, ferr = (stack.enter_context(tempfile.TemporaryFile()) for _ in range(3))
            fin.write(nonce + b"\n" + program.encode("utf-8", "surrogateescape"))
            fin.seek(0)
            # bwrap gets an empty environment: its own /proc/<pid>/environ must hold nothing of ours either
            env: dict[str, str] = {}
            cwd = "/"
            if unconfined:
                cwd = stack.enter_context(tempfile.TemporaryDirectory(prefix="codellama-eval-"))
                env = {"PATH": "/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8"}
            proc = subprocess.Popen(
                cmd, stdin=fin, stdout=fout, stderr=ferr, env=env, cwd=cwd, pass_fds=(info_w,), start_new_session=True
            )
            os.close(info_w)
            info_w = -1
            deadline = time.monotonic() + limits.timeout_s
            pidfd = None if unconfined else _init_pidfd(info_r, deadline)
            try:
                code: int | None = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
            finally:
                if unconfined:  # its session: whatever it started (unless it left the session: unconfined)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                else:
                    _end(proc, pidfd)
            out, err = _tail(fout), _tail(ferr)
    finally:
        os.close(info_r)
        if info_w >= 0:
            os.close(info_w)
    marker = b"\n" + nonce + b"\n"
    returned = code == 0 and out.endswith(marker)
    stdout = out[: -len(marker)] if returned else out
    status = "timeout" if code is None else "passed" if returned else "failed"
    return Result(status, code, stdout.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def check() -> None:
    """Raise ``SandboxError`` (saying how to fix it) unless programs can be confined here.

    Runs a probe through ``run``: bwrap must start, the probe must see only loopback and its own processes,
    and must not find this process's environment.
    """
    probe = (
        "import os, socket\n"
        "assert [n for _, n in socket.if_nameindex()] == ['lo'], socket.if_nameindex()\n"
        "assert os.getuid() != 0 and not os.path.exists('/etc/passwd') and len(os.environ) <= 6, dict(os.environ)\n"
    )
    try:
        r = run(probe, Limits(timeout_s=30))
    except OSError as e:
        raise SandboxError(f"expected to start bubblewrap ({BWRAP}), got {e}: {HOW_TO_FIX}") from None
    if not r.passed:
        got = (r.stderr.strip() or r.stdout.strip() or f"exit status {r.exit_code}").splitlines()[-1][:300]
        raise SandboxError(f"expected bubblewrap to confine a probe program, got {r.status}: {got}: {HOW_TO_FIX}")


def describe(unconfined: bool, limits: Limits) -> dict[str, object]:
    """What a run was confined by, for the eval report's JSON."""
    if unconfined:
        return {"confined": False, "timeout_s": limits.timeout_s, "note": "--unsafe-no-sandbox: not confined"}
    return {
        "confined": True,
        "tool": "bubblewrap",
        "as_root": os.geteuid() == 0,
        "timeout_s": limits.timeout_s,
        "memory_mb": limits.memory_mb,
        "processes": limits.processes,
        "network": "none (empty namespace)",
    }
