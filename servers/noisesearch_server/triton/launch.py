"""Starting a real tritonserver from `.venv-triton` (scripts/setup.mjs --test makes it): the binary that
nvidia-pytriton ships, with its Python backend laid out the way Triton looks for it and the stub embedding
that venv's interpreter, so the Python-backend models in deploy/triton/ import numpy 1.26.4 (the stub's C++
reads numpy 1's layout) and everything else from the clone and the main venv.

    python -m noisesearch_server.triton.launch --repository deploy/triton/gmm [-- extra tritonserver args]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
SETUP_HINT = "run npm test's set-up or: node scripts/setup.mjs --test"
# A readiness probe answers in milliseconds on a live server; a short deadline keeps a hung one from eating
# the whole wait.
PROBE_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.1


@dataclass
class TritonServer:
    process: subprocess.Popen
    grpc_address: str
    http_port: int
    metrics_url: str
    log_path: Path

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (Triton drains in-flight requests for --exit-timeout-secs), then SIGKILL if it overstays."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would, and its Python-backend stubs too: a stub busy with a request when tritonserver
        dies never notices and runs on. A server already gone is left alone (its pid may be another's by now)."""
        if self.process.poll() is not None:
            return
        stubs = _children(self.process.pid)
        self.process.kill()
        self.process.wait()
        for pid in stubs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in parentheses may hold spaces; the parent's pid is the second field after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _venv_paths(triton_venv: Path) -> tuple[Path, Path, str]:
    """(site-packages, the interpreter's LIBDIR, "major.minor") of the venv's Python."""
    python = triton_venv / "bin" / "python"
    if not python.exists():
        raise FileNotFoundError(f"no Triton venv at {triton_venv}: {SETUP_HINT}")
    script = (
        "import json, sys, sysconfig; print(json.dumps([sysconfig.get_path('purelib'), "
        "sysconfig.get_config_var('LIBDIR'), '%d.%d' % sys.version_info[:2]]))"
    )
    site, libdir, version = json.loads(subprocess.run(
        [str(python), "-c", script], check=True, capture_output=True, text=True, timeout=30,
    ).stdout)
    return Path(site), Path(libdir), version


def _backend_directory(triton_venv: Path, site: Path, version: str) -> Path:
    """Triton loads backend B from <dir>/B/ and the Python backend runs the stub it finds beside its library, so
    the library, its utilities and the stub for this venv's Python are gathered in one folder, once per venv
    (setup's --clear of the venv clears it too)."""
    backends = triton_venv / "triton-backends"
    target = backends / "python"
    if target.is_dir():
        return backends
    shipped = site / "pytriton" / "tritonserver"
    sources = [
        shipped / "backends" / "python" / "libtriton_python.so",
        shipped / "backends" / "python" / "triton_python_backend_utils.py",
        shipped / "python_backend_stubs" / version / "triton_python_backend_stub",
    ]
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise FileNotFoundError(f"{triton_venv} lacks {', '.join(missing)}: {SETUP_HINT}")
    backends.mkdir(exist_ok=True)
    # Filled aside and renamed into place, so that two launches at once never see half a folder.
    staging = Path(tempfile.mkdtemp(prefix="python-", dir=backends))
    for source in sources:
        shutil.copy2(source, staging / source.name)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging)
        if not target.is_dir():
            raise
    return backends


def free_ports(count: int) -> list[int]:
    """Ports the kernel has free now; all are held until all are chosen so that they differ. Another process may
    take one before tritonserver binds it: the start then fails naming the port in its log."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _log_summary(log_path: Path, lines: int = 8) -> str:
    """Triton's error lines (E<date> ...), or the log's last lines when it has none; for a bad command line, what
    precedes the usage text Triton prints after it."""
    try:
        text = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    usage = next((i for i, line in enumerate(text) if line.startswith("Usage: tritonserver")), None)
    if usage is not None:
        text = text[:usage]
    errors = [line for line in text if len(line) > 1 and line[0] == "E" and line[1].isdigit()]
    chosen = (errors or [line for line in text if line.strip()])[-lines:]
    return "\n".join("    " + line for line in chosen) or "    (empty log)"


def _client(grpc_address: str):
    try:
        from .client import TritonClient
    except ImportError:
        raise RuntimeError(f"the Triton client (tritonclient) is missing from this venv: {SETUP_HINT}") from None
    return TritonClient(grpc_address, timeout_s=PROBE_TIMEOUT_S, max_message_bytes=4 << 20)


def _not_ready(client, models: Sequence[str]) -> list[str]:
    """What is not ready yet, in words: the server, or each model with the reason Triton gives."""
    from ..backend import RequestError
    from .client import TritonModelError

    if not client.server_ready(PROBE_TIMEOUT_S):
        return ["the server"]
    try:
        reasons = client.not_ready_reasons(models, PROBE_TIMEOUT_S)
    except (RequestError, TritonModelError) as error:
        return [f"the server ({error})"]
    return [f"model {model} ({reason})" for model, reason in reasons.items()]


def wait_ready(grpc_address: str, models: Sequence[str] = (), timeout_s: float = 60.0) -> None:
    """Until Triton's ServerReady and each model's ModelReady are true; TimeoutError names what is not."""
    client = _client(grpc_address)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            waiting = _not_ready(client, models)
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Triton at {grpc_address} not ready after {timeout_s:g} s: {'; '.join(waiting)}")
            time.sleep(POLL_INTERVAL_S)
    finally:
        client.close()


def start_triton(
    repository: Path | str,
    *,
    triton_venv: Path | None = None,
    grpc_port: int = 0,
    http_port: int = 0,
    metrics_port: int = 0,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
    wait_s: float = 60.0,
    wait_ready: bool = True,
) -> TritonServer:
    """A tritonserver serving `repository`; ports 0 are chosen free. With `wait_ready`, returns once ServerReady
    (with Triton's default strict readiness: every model ready), or raises RuntimeError naming the log."""
    repository = Path(repository).resolve()
    if not repository.is_dir():
        raise FileNotFoundError(f"no model repository at {repository}")
    triton_venv = (triton_venv or REPO_ROOT / ".venv-triton").resolve()
    site, libdir, version = _venv_paths(triton_venv)
    backends = _backend_directory(triton_venv, site, version)
    binary = site / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    free = iter(free_ports(3))
    grpc_port, http_port, metrics_port = (port or next(free) for port in (grpc_port, http_port, metrics_port))
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    log_path = Path(log_path)

    env = dict(os.environ)
    # The Triton build's own libraries, and libpython from the very interpreter the venv runs: another patch
    # release of libpython3.11 (Debian's) breaks the stub.
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(site / "nvidia_pytriton.libs"), str(libdir)] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
    )
    # The stub embeds the `python3` it finds first on PATH, hence the venv's, with its numpy 1.
    env["PATH"] = os.pathsep.join([str(triton_venv / "bin"), env.get("PATH", "")])
    command = [
        str(binary),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--grpc-port={grpc_port}",
        f"--http-port={http_port}",
        f"--metrics-port={metrics_port}",
        "--exit-timeout-secs=5",
        # The repository's config.pbtxt files are the contract (docs/triton.md): Triton must not fill them in.
        "--disable-auto-complete-config",
        "--log-verbose=0",
    ]
    if shutil.which("nvidia-smi") is None:
        # No GPU: skip the pinned and CUDA memory pools Triton would otherwise try to allocate at start.
        command += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0"]
    command += list(extra_args)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = TritonServer(
        process=process,
        grpc_address=f"127.0.0.1:{grpc_port}",
        http_port=http_port,
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        log_path=log_path,
    )
    if wait_ready:
        try:
            _wait_started(server, wait_s)
        except BaseException:
            server.kill()
            raise
    return server


def _wait_started(server: TritonServer, wait_s: float) -> None:
    client = _client(server.grpc_address)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            code = server.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {code} before it was ready; its log {server.log_path} says:\n"
                    + _log_summary(server.log_path)
                )
            waiting = _not_ready(client, ())
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"tritonserver not ready after {wait_s:g} s ({'; '.join(waiting)}); its log {server.log_path} "
                    f"says:\n" + _log_summary(server.log_path)
                )
            time.sleep(POLL_INTERVAL_S)
    finally:
        client.close()


class _Stop(Exception):
    pass


def _stop_on_signal(signum, frame) -> None:
    raise _Stop


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="python -m noisesearch_server.triton.launch",
        description="Start tritonserver from .venv-triton; arguments after -- go to tritonserver.",
    )
    parser.add_argument("--repository", required=True, type=Path, help="the model repository (e.g. deploy/triton/gmm)")
    parser.add_argument("--grpc-port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--http-port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--metrics-port", type=int, default=0, help="0 (default): a free port")
    parser.add_argument("--log", type=Path, default=None, help="tritonserver's log (default: a temporary file)")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for readiness (default 60)")
    args = parser.parse_args(own)
    if not args.repository.is_dir():
        print(f"no model repository at {args.repository}", file=sys.stderr)
        return 2
    if not (REPO_ROOT / ".venv-triton" / "bin" / "python").exists():
        print(f"no Triton venv at {REPO_ROOT / '.venv-triton'}: {SETUP_HINT}", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    server = None
    try:
        server = start_triton(
            args.repository, grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
            log_path=args.log, extra_args=extra, wait_s=args.wait,
        )
        print(f"triton ready grpc={server.grpc_address} http=127.0.0.1:{server.http_port} metrics={server.metrics_url}", flush=True)
        code = server.process.wait()
        print(f"tritonserver exited with code {code}; see its log {server.log_path}", file=sys.stderr)
        return 1
    except _Stop:
        if server is not None:
            # A second signal must not cut the stop short: stop() itself ends in SIGKILL if Triton overstays.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            server.stop()
        return 0
    except (RuntimeError, FileNotFoundError) as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
