"""The eval sandbox (``lsp_server.sandbox``, bubblewrap) against hostile programs, run through the real sandbox.

Each attack of issue 23 is a program that tries to do harm and would end normally if it could. The test
asserts on the host that the harm did not happen (the file outside was not written, the secret was not
read, the other process is alive, no grandchild survives, the servers saw no connection, the fork bomb and
the memory hog were contained) and that the program scored ``failed``. Honest programs pass; a program
that leaves early with status 0 (``sys.exit(0)``, ``exit(0)``, ``os._exit(0)``, ``raise SystemExit``) fails.
A Hypothesis fuzz mixes benign and fatal statements inside a function and checks the scoring and the
clean-up on every draw. Nothing here is mocked except where a test says so: a machine whose bwrap cannot
confine programs fails these tests (the fixture's error says how to fix it), it does not skip them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lsp_server import eval as ev
from lsp_server import sandbox

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def confined() -> None:
    sandbox.check()  # raises SandboxError with the fix when this machine cannot run bwrap


def hostile(code: str, limits: sandbox.Limits | None = None) -> sandbox.Result:
    return sandbox.run(textwrap.dedent(code), limits)


DRIVER = """
import dataclasses, json, sys
from lsp_server import sandbox
a = json.load(sys.stdin)
if not a["unconfined"]:
    sandbox.check()
print(json.dumps(dataclasses.asdict(sandbox.run(a["code"], sandbox.Limits(**a["limits"]), a["unconfined"]))))
"""
SYSTEM_PYTHON = Path("/usr/bin/python3")


@dataclass
class Runner:
    """Runs hostile programs as this user (as root: the outer-bwrap, setpriv, inner-bwrap chain), or, when the
    tests run as root, also as an unprivileged user (nobody, with the system's Python, which nobody can
    read): the one-bwrap path that CI and every ordinary user take. ``prefix`` starts a host process as that
    user (a victim of the same uid). With ``env``, the sandbox runs from a fresh process started with that
    environment, so that it is in that process's ``/proc/<pid>/environ`` as an API key would be."""

    name: str
    prefix: list[str]
    python: str

    def __call__(
        self, code: str, limits: sandbox.Limits | None = None, env: dict[str, str] | None = None, unconfined: bool = False
    ) -> sandbox.Result:
        code = textwrap.dedent(code)
        if not self.prefix and env is None:
            return sandbox.run(code, limits, unconfined)
        args = {"code": code, "limits": dataclasses.asdict(limits or sandbox.Limits()), "unconfined": unconfined}
        p = subprocess.run(
            [*self.prefix, self.python, "-c", DRIVER],
            input=json.dumps(args),
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
            cwd="/",
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        return sandbox.Result(**json.loads(p.stdout))


@pytest.fixture(params=["this-user", "nobody"])
def runner(request: pytest.FixtureRequest) -> Runner:
    if request.param == "this-user":
        return Runner("this-user", [], sys.executable)
    if os.geteuid() != 0 or not SYSTEM_PYTHON.exists() or not shutil.which("setpriv"):
        pytest.skip("the unprivileged path is the this-user case here (not root, or no /usr/bin/python3 or setpriv)")
    return Runner("nobody", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], str(SYSTEM_PYTHON))


def procs_with(token: str) -> list[int]:
    """Host pids of live (not zombie) processes whose command line contains ``token``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if token.encode() in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


@pytest.fixture
def outside() -> Iterator[Path]:
    """A host directory outside /tmp (the sandbox's /tmp is its own): in the working tree, removed after."""
    d = Path(tempfile.mkdtemp(prefix=".sandbox-test-", dir=ROOT))
    d.chmod(0o777)  # so that, run as nobody, only the sandbox stands in the way
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Server:
    """A listening socket (TCP on 127.0.0.1, or Unix at a path or abstract name) that counts connections."""

    def __init__(self, family: int, address: str | tuple[str, int]) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        if isinstance(address, str) and not address.startswith("\0"):
            os.chmod(address, 0o777)  # so that, run as nobody, only the sandbox stands in the way
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def host_connects(self) -> bool:
        """The server is reachable from the host (so "no connection" is not a dead server's doing)."""
        with socket.socket(self.sock.family, socket.SOCK_STREAM) as c:
            c.connect(self.address)
        deadline = time.monotonic() + 5
        while self.connections == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.connections == 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


# ---- the file system -----------------------------------------------------------------------------------------
def test_cannot_write_outside_its_tmp(runner: Runner, outside: Path, tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    targets = [
        outside / "pwned",
        tmp_path / "pwned",
        ROOT / f"pwned-{tag}",
        site / f"codellama-sandbox-test-{tag}.pth",  # the shared virtual environment: a .pth runs at every start
        Path(sys.prefix).resolve() / f"pwned-{tag}",
        Path(f"/root/pwned-{tag}"),
        Path(f"/etc/pwned-{tag}"),
        Path(f"/usr/pwned-{tag}"),
    ]
    try:
        r = runner(
            f"""
            wrote, refused = [], []
            for path in {[str(t) for t in targets]!r}:
                try:
                    with open(path, "w") as f:
                        f.write("import os; os.system('echo pwned')\\n")
                    wrote.append(path)
                except OSError as e:
                    refused.append((path, e.strerror))
            print("wrote", wrote, "refused", refused)
            assert not refused
            """
        )
        assert r.status == "failed", r
        assert "wrote []" in r.stdout, r.stdout
        for t in targets:
            assert not t.exists(), t
    finally:
        for t in targets:
            if t.exists() and t.is_file() and ("pwned" in t.name or "sandbox-test" in t.name):
                t.unlink()


def test_cannot_read_or_list_the_host(runner: Runner, outside: Path) -> None:
    secret = secrets.token_hex(16)
    (outside / "secret.txt").write_text(secret)
    r = runner(
        f"""
        import os, sys
        seen = {{}}
        for path in ({str(outside / "secret.txt")!r}, {str(ROOT / "pyproject.toml")!r}, "/etc/passwd", "/etc/shadow"):
            try:
                seen[path] = open(path).read()[:200]
            except OSError as e:
                seen[path] = e.strerror
        # what of /root, /home and the working tree is visible beyond the path to the interpreter
        on_path = {{p for x in (sys.prefix, sys.base_prefix, os.path.realpath(sys.executable)) for p in x.split("/")}}
        for d in ("/root", "/home", "/work", {str(ROOT)!r}):
            try:
                seen[d] = sorted(set(os.listdir(d)) - on_path)
            except OSError as e:
                seen[d] = e.strerror
        print(seen)
        assert {secret!r} in str(seen) or any(isinstance(v, list) and v for v in seen.values())
        """
    )
    assert r.status == "failed", r
    assert secret not in r.stdout + r.stderr
    assert "root:x:0:0" not in r.stdout
    for name in ("pyproject.toml", "lsp_server", "tests"):  # the working tree's files: not even their names
        assert f"'{name}'" not in r.stdout, r.stdout


def test_environment_of_this_process_is_not_readable(runner: Runner) -> None:
    secret = "sk-" + secrets.token_hex(20)
    # what `eval --engine openai` would hold, in the environment of the process that runs the sandbox
    env = {"OPENAI_API_KEY": secret, "CODELLAMA_SANDBOX_TEST_SECRET": secret}
    code = """
        import os
        # anything that looks like a key, anywhere this program can read; what it prints is kept short (the
        # sandbox keeps the tail of a long output, and a CI machine's other processes have KEY in their
        # command lines): the test's own two variables first, then a count of the rest
        names = (b"OPENAI_API_KEY=", b"CODELLAMA_SANDBOX_TEST_SECRET=")
        found = {k: v for k, v in os.environ.items() if "KEY" in k or "SECRET" in k}
        broad = dict(found)
        for pid in [os.getppid(), 1, *(int(p) for p in os.listdir("/proc") if p.isdigit())]:
            for what in ("environ", "cmdline"):
                try:
                    data = open(f"/proc/{pid}/{what}", "rb").read()
                except OSError:
                    continue
                for item in data.split(b"\\0"):
                    if b"KEY" in item or b"SECRET" in item:
                        broad[f"{pid}/{what}"] = item.decode(errors="replace")
                    if item.startswith(names):
                        found[f"{pid}/{what}"] = item.decode(errors="replace")
        print("found", found)
        print("anything like a key:", len(broad))
        assert found
        """
    r = runner(code, env=env)
    assert r.status == "failed", r
    assert "found {}" in r.stdout, r.stdout
    assert "anything like a key: 0" in r.stdout, r.stdout
    assert secret not in r.stdout + r.stderr
    # the same program unconfined finds it (in its parent's /proc/<pid>/environ): the probe itself works
    unconfined = runner(code, env=env, unconfined=True)
    assert unconfined.status == "passed" and secret in unconfined.stdout, unconfined


def test_unix_socket_of_a_host_service_is_unreachable(runner: Runner, outside: Path) -> None:
    servers = [
        Server(socket.AF_UNIX, str(outside / "svc.sock")),
        Server(socket.AF_UNIX, "\0codellama-sandbox-test-" + secrets.token_hex(4)),  # abstract: per network namespace
    ]
    try:
        addresses = [s.address if isinstance(s.address, str) else s.address.decode() for s in servers]
        r = runner(
            f"""
            import socket
            reached = []
            for address in {addresses!r}:
                with socket.socket(socket.AF_UNIX) as s:
                    try:
                        s.connect(address)
                        reached.append(address)
                    except OSError as e:
                        print(repr(address), e.strerror)
            print("reached", reached)
            assert reached
            """
        )
        assert r.status == "failed", r
        assert [s.connections for s in servers] == [0, 0]
        assert all(s.host_connects() for s in servers)
    finally:
        for s in servers:
            s.close()


def test_host_network_is_unreachable_even_through_setns(runner: Runner) -> None:
    """As root the old sandbox re-entered the host's network with setns(/proc/<ppid>/ns/net)."""
    server = Server(socket.AF_INET, ("127.0.0.1", 0))
    try:
        port = server.address[1]
        r = runner(
            f"""
            import ctypes, os, socket
            libc = ctypes.CDLL(None, use_errno=True)
            for pid in sorted({{1, os.getppid(), {os.getpid()}}}):
                try:
                    fd = os.open(f"/proc/{{pid}}/ns/net", os.O_RDONLY)
                except OSError as e:
                    print("open", pid, e.strerror)
                    continue
                print("setns", pid, libc.setns(fd, 0x40000000), os.strerror(ctypes.get_errno()))
            print([n for _, n in socket.if_nameindex()])
            socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
            print("connected")
            """
        )
        assert r.status == "failed", r
        assert "connected" not in r.stdout and "['lo']" in r.stdout, r.stdout
        assert server.connections == 0
        assert server.host_connects()
    finally:
        server.close()


# ---- processes -----------------------------------------------------------------------------------------------
def test_cannot_kill_a_process_of_the_same_user(runner: Runner) -> None:
    victim = subprocess.Popen([*runner.prefix, "/bin/sleep", "120"])
    try:
        r = runner(
            f"""
            import os, signal
            try:
                os.kill(-1, signal.SIGKILL)  # everything this uid may signal
            except OSError as e:
                print("kill -1", e.strerror)
            os.kill({victim.pid}, signal.SIGKILL)
            print("killed")
            """
        )
        assert r.status == "failed", r
        assert "killed" not in r.stdout
        time.sleep(0.2)
        assert victim.poll() is None  # alive
    finally:
        victim.kill()
        victim.wait()


GRANDCHILD = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", "{token}"])
    os._exit(0)
os.wait()
time.sleep(2.0)
{end}
"""


@pytest.mark.parametrize(
    "end,status",
    [("os._exit(0)", "failed"), ("pass", "passed"), ("while True: pass", "timeout")],
    ids=["exits", "returns", "times-out"],
)
def test_no_grandchild_survives_the_run(runner: Runner, end: str, status: str) -> None:
    token = "codellama-sandbox-test-" + secrets.token_hex(6)
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:  # the grandchild did start (seen from the host), so its absence afterwards means something
        while not done.is_set():
            seen.extend(procs_with(token))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = runner(GRANDCHILD.format(token=token, end=end), sandbox.Limits(timeout_s=6))
    finally:
        done.set()
        watcher.join()
    assert seen, "the grandchild never ran"
    assert procs_with(token) == []
    assert r.status == status, r


def test_fork_bomb_is_contained(runner: Runner) -> None:
    limits = sandbox.Limits()
    r = runner(
        """
        import os, time
        n = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(3)
                    os._exit(0)
                n += 1
        finally:
            print("forked", n)
        """
    )
    assert r.status == "failed", r
    assert f"forked {limits.processes - 1}\n" in r.stdout, r.stdout  # the program itself and 3 more
    assert "Resource temporarily unavailable" in r.stderr

    t0 = time.monotonic()
    r = runner(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", sandbox.Limits(timeout_s=3)
    )
    assert r.status == "timeout" and time.monotonic() - t0 < 30
    assert procs_with("_harness()") == []


def test_threads_count_as_processes(runner: Runner) -> None:
    code = "import threading, time\nts = [threading.Thread(target=time.sleep, args=(0.5,)) for _ in range({n})]\n"
    code += "for t in ts: t.start()\nfor t in ts: t.join()\n"
    assert runner(code.format(n=2)).status == "passed"
    r = runner(code.format(n=8))
    assert r.status == "failed" and "can't start new thread" in r.stderr, r


def test_memory_of_the_whole_tree_is_bounded(runner: Runner) -> None:
    limits = sandbox.Limits()
    # three children of 700 MiB each got 2.1 GiB from the old per-process limit of 1 GiB
    r = runner(
        """
        import os
        pids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                x = bytearray(700 << 20)
                os._exit(0)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
        print("children", codes)
        assert codes == [0, 0, 0]
        """
    )
    assert r.status == "failed", r
    assert "children [1, 1, 1]" in r.stdout, r.stdout  # each child's MemoryError
    # every process takes what it can, all at once: the sum stays under the budget
    r = runner(
        """
        import os
        def hog():
            got = []
            try:
                while True:
                    got.append(bytearray(8 << 20))
            except MemoryError:
                return 8 * len(got)
        r, w = os.pipe()
        hold, release = os.pipe()  # every child holds its memory until the parent has taken its own
        pids = []
        for _ in range(8):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                os.close(release)
                os.write(w, b"%d\\n" % hog())
                os.read(hold, 1)
                os._exit(0)
            pids.append(pid)
        os.close(hold)
        mine = hog()
        buf = b""
        while buf.count(b"\\n") < len(pids):  # one line from each child
            buf += os.read(r, 64)
        got = [int(x) for x in buf.split()] + [mine]
        os.close(release)
        for p in pids:
            os.waitpid(p, 0)
        print("processes", len(got), "MiB", sum(got))
        """
    )
    assert r.status == "passed", r
    n, total = int(r.stdout.split()[1]), int(r.stdout.split()[3])
    assert n == limits.processes and 0 < total <= limits.memory_mb, r.stdout
    r = runner("x = bytearray(3 << 30)\n")
    assert r.status == "failed" and "MemoryError" in r.stderr


@pytest.mark.parametrize("where", ["/tmp", "/dev/shm"])
def test_writable_tmpfs_is_bounded(runner: Runner, where: str) -> None:
    """tmpfs pages are memory that no rlimit counts: /tmp and /dev/shm have a size."""
    r = runner(
        f"""
        import os
        total = 0
        try:
            for i in range(1000):
                with open(f"{where}/f{{i}}", "wb") as f:
                    for _ in range(4):
                        f.write(b"x" * (1 << 20))
                        f.flush()
                        total += 1
        finally:
            print("MiB", total)
        """
    )
    assert r.status == "failed", r
    cap = sandbox.Limits().tmp_mb if where == "/tmp" else 1
    assert int(r.stdout.split()[1]) <= cap, r.stdout


def test_output_flood_is_cut(runner: Runner) -> None:
    t0 = time.monotonic()
    r = runner("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", sandbox.Limits(timeout_s=20))
    assert r.status == "failed" and r.exit_code != 0  # SIGXFSZ at the file-size limit, long before the timeout
    assert time.monotonic() - t0 < 20 and len(r.stdout) <= sandbox.TAIL


# ---- scoring ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def humaneval0() -> tuple[dict, ev.Task]:
    problems = ev.load_problems()[:1]
    task = ev.build_tasks("single-line", problems)[-1]  # HumanEval/0's "return False"
    assert task.middle.strip() == "return False"
    return problems[0], task


@pytest.mark.parametrize(
    "completion",
    [
        "    import sys; sys.exit(0)",
        "    exit(0)",
        "    quit()",
        "    import os; os._exit(0)",
        "    raise SystemExit",
        "    raise SystemExit(0)",
        "    import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "    print('passed'); print('PASSED'); import sys; sys.exit(0)",
        "    import sys; sys.stdout.write('\\n' + '0' * 32 + '\\n'); sys.exit(0)",  # a guessed nonce
        "    import atexit, os; atexit.register(os._exit, 0); raise ValueError",
    ],
)
def test_leaving_early_inside_the_function_fails(humaneval0: tuple[dict, ev.Task], completion: str) -> None:
    problem, task = humaneval0
    assert ev.run_sandboxed(ev.program(problem, task, completion)) == "failed"


def test_honest_programs_pass(humaneval0: tuple[dict, ev.Task]) -> None:
    problem, task = humaneval0
    assert ev.run_sandboxed(ev.program(problem, task, task.middle)) == "passed"
    assert ev.run_sandboxed(ev.program(problem, task, "    return True")) == "failed"
    honest = """
        import hashlib, json, math, os, re, sys, tempfile, threading
        with open("scratch.txt", "w") as f:  # its working directory, /tmp
            f.write("ok")
        assert open(os.path.join(tempfile.gettempdir(), "scratch.txt")).read() == "ok"
        assert os.getcwd() == os.environ["HOME"] == "/tmp" and "VIRTUAL_ENV" not in os.environ
        assert input.__name__ and sys.stdin.read() == ""  # stdin is empty
        print("y" * 100000)  # more than the tail a Result keeps
        t = threading.Thread(target=lambda: None)
        t.start(); t.join()
        print(hashlib.sha256(b"x").hexdigest()[:8], math.comb(50, 25), json.dumps({"a": re.sub("a", "b", "a")}))
        """
    r = hostile(honest)
    assert r.status == "passed", r
    assert r.stdout.endswith(f'{hashlib.sha256(b"x").hexdigest()[:8]} 126410606437752 {{"a": "b"}}\n')


def test_all_canonical_solutions_pass() -> None:
    """All 164 problems' canonical solutions pass in the sandbox (the limits do not fail honest code)."""
    problems = ev.load_problems()
    tasks = {t.problem: t for t in ev.build_tasks("random-span-light", problems)}

    def run(p: dict) -> str:
        task = tasks[p["task_id"]]
        return ev.run_sandboxed(ev.program(p, task, task.middle))

    with ThreadPoolExecutor(max_workers=2) as pool:  # as `eval --jobs 2` runs them: concurrent sandboxes
        results = list(pool.map(run, problems))
    assert [p["task_id"] for p, r in zip(problems, results, strict=True) if r != "passed"] == []


# ---- refusing to run unconfined ----------------------------------------------------------------------------
def test_missing_bwrap_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "BWRAP", None)
    with pytest.raises(sandbox.SandboxError, match=r"apt-get install bubblewrap.*--unsafe-no-sandbox"):
        sandbox.check()
    with pytest.raises(sandbox.SandboxError):
        sandbox.run("print(1)")


def test_bwrap_without_namespaces_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a stand-in for bwrap in a container without user namespaces (what bwrap prints there): the one fake here
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because the kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "BWRAP", str(fake))
    with pytest.raises(sandbox.SandboxError, match=r"No permissions to creating new namespace.*allow user namespaces"):
        sandbox.check()


def test_eval_refuses_then_runs_unconfined_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sandbox, "BWRAP", None)
    # refused before any model loads (this model does not exist: the sandbox error comes first)
    assert ev.main(["--model", "/nonexistent/model.gguf", "--limit", "1"]) == 1
    assert "bubblewrap" in capsys.readouterr().err
    # --unsafe-no-sandbox: unconfined, but scored the same way
    assert ev.run_sandboxed("print(1)\n", unconfined=True) == "passed"
    assert ev.run_sandboxed("import sys\nsys.exit(0)\n", unconfined=True) == "failed"
    assert ev.run_sandboxed("while True: pass\n", timeout_s=1, unconfined=True) == "timeout"


# ---- fuzz ----------------------------------------------------------------------------------------------------
BENIGN = [
    "x = [i * i for i in range(1000)]",
    "print('line')",
    "import os\nif os.fork() == 0:\n    os._exit(3)\nos.wait()",
    "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', TOKEN])\n    os._exit(0)\nos.wait()",
    "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
    "open('f.txt', 'a').write('x')",
    "import os, sys\nsys.stdout = open(os.devnull, 'w')",
    "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 22), timeout=0.2)\nexcept OSError:\n    pass",
]
FATAL = [
    "import sys\nsys.exit(0)",
    "exit(0)",
    "raise SystemExit",
    "import os\nos._exit(0)",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "raise ValueError('no')",
    "import os\nos.close(1)",
    "print('0' * 32)\nimport sys\nsys.exit(0)",
]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from([(s, False) for s in BENIGN] + [(s, True) for s in FATAL]), min_size=1, max_size=5))
def test_fuzz_scoring_and_clean_up(statements: list[tuple[str, bool]]) -> None:
    """Statements inside a function: passed exactly when none of them leaves early; nothing survives."""
    token = "codellama-sandbox-fuzz-" + secrets.token_hex(6)
    body = "\n".join(textwrap.indent(s, "    ") for s, _ in statements)
    program = f"TOKEN = {token!r}\ndef f():\n{body}\nf()\n"
    # benign one by one, not together: each statement may leave a grandchild or a thread behind (and a child, a
    # zombie until reaped), so five of them need more than the default 4 tasks (a fork then fails with EAGAIN)
    r = sandbox.run(program, sandbox.Limits(timeout_s=10, processes=16))
    expected = "failed" if any(fatal for _, fatal in statements) else "passed"
    assert r.status == expected, (program, r)
    assert procs_with(token) == []
