"""Start the real ``tritonserver`` that NVIDIA's pytriton wheel bundles, on 127.0.0.1, for the Triton tests.

The wheel pins numpy<2, so the server side lives in a virtual environment of its own (``.ci/run`` makes
``.venv-triton`` with ``pip install '.[triton-server]'``; ``CLIP_DEBIAS_TRITON_VENV`` names another one); the test
client (tritonclient) stays in the main environment. The wheel ships the python backend only, with one stub per
Python version; what it takes to run that stub from a venv (found on these machines):

- the stub is copied into ``BACKENDS/python/`` beside ``libtriton_python.so`` and ``triton_python_backend_utils.py``,
  and the wheel's ``nvidia_pytriton.libs`` (the libraries the stub's RPATH found there) goes on ``LD_LIBRARY_PATH``;
- the venv's base ``libpython3.X.so`` goes first on ``LD_LIBRARY_PATH`` (the stub links a ``libpython3.X.so.1.0``
  and would otherwise take the distribution's, whose standard library and prefix differ);
- the stub's embedded interpreter runs isolated (it ignores ``PYTHONPATH``) and takes its prefix from the first
  ``python3`` on ``PATH``: with the venv's ``bin`` first it finds the venv's ``pyvenv.cfg`` and so the venv's
  site-packages (numpy<2, and clip-debias installed editable from this checkout: ``find_server_env`` checks that).

Every port is a free one on 127.0.0.1 (HTTP, gRPC, metrics); ``stop`` ends the server (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


@dataclass
class ServerEnv:
    """A Python environment holding pytriton (the server binary) and numpy<2."""

    python: Path
    pytriton: Path  # the pytriton package folder
    site_packages: Path
    libdir: Path  # the base interpreter's LIBDIR (libpython3.X.so)
    version: str  # "3.11"
    serving: Path  # where the venv imports clip_debias.serving from


def find_server_env() -> ServerEnv | None:
    """The server environment: ``CLIP_DEBIAS_TRITON_VENV``, else ``ROOT/.venv-triton``, else this interpreter's;
    None when none holds pytriton."""
    candidates = [os.environ.get("CLIP_DEBIAS_TRITON_VENV"), str(ROOT / ".venv-triton")]
    pythons = [Path(c) / "bin" / "python" for c in candidates if c] + [Path(sys.executable)]
    code = ("import os, sys, sysconfig, pytriton, numpy; "
            "print(os.path.dirname(pytriton.__file__)); print(sysconfig.get_paths()['purelib']); "
            "print(sysconfig.get_config_var('LIBDIR')); print('%d.%d' % sys.version_info[:2]); "
            "print(numpy.__version__); "
            "import clip_debias.serving as s; print(os.path.dirname(s.__file__))")
    for py in pythons:
        if not py.exists():
            continue
        res = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
        if res.returncode == 0:
            pkg, site, libdir, version, numpy_version, serving = res.stdout.split()
            if int(numpy_version.split(".")[0]) < 2:
                return ServerEnv(py, Path(pkg), Path(site), Path(libdir), version, Path(serving))
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def backend_directory(env: ServerEnv, tmp: Path) -> Path:
    """``tmp/backends/python/`` holding the wheel's python backend and the stub for ``env``'s Python version."""
    src = env.pytriton / "tritonserver"
    dst = tmp / "backends" / "python"
    dst.mkdir(parents=True, exist_ok=True)
    for f in (src / "backends" / "python").iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)
    stub = src / "python_backend_stubs" / env.version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"{stub}: the pytriton wheel has no python backend stub for Python {env.version}")
    shutil.copy2(stub, dst / stub.name)
    return tmp / "backends"


@dataclass
class TritonServer:
    """A running ``tritonserver`` (see the module docstring)."""

    process: subprocess.Popen
    http_port: int
    metrics_port: int
    log: Path
    started_s: float = 0.0  # from launch to ready (or to exit)
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{HOST}:{self.http_port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait(self, timeout_s: float) -> bool:
        """Wait until ready (True) or until the process exits or the time is up (False)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout_s:
            if self.process.poll() is not None:
                break
            if self.ready():
                self.started_s = time.perf_counter() - t0
                return True
            time.sleep(0.1)
        self.started_s = time.perf_counter() - t0
        return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def model_stats(self, model: str) -> dict:
        with urllib.request.urlopen(f"http://{self.url}/v2/models/{model}/stats", timeout=5) as r:
            return json.loads(r.read())["model_stats"][0]

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(env: ServerEnv, repo: Path, tmp: Path, exit_on_error: bool = True) -> TritonServer:
    """Launch ``tritonserver`` on ``repo`` with every endpoint on 127.0.0.1 and free ports (not yet waited for)."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    binary = env.pytriton / "tritonserver" / "bin" / "tritonserver"
    argv = [str(binary), f"--model-repository={repo}", f"--backend-directory={backend_directory(env, tmp)}",
            f"--http-address={HOST}", f"--http-port={http}", f"--grpc-address={HOST}", f"--grpc-port={grpc}",
            f"--metrics-address={HOST}", f"--metrics-port={metrics}", "--allow-gpu-metrics=false",
            "--allow-sagemaker=false", "--allow-vertex-ai=false", f"--exit-on-error={str(exit_on_error).lower()}",
            "--strict-readiness=true", "--exit-timeout-secs=10", "--log-verbose=0"]
    env_vars = {**os.environ,
                "LD_LIBRARY_PATH": os.pathsep.join([str(env.libdir), str(env.pytriton.parent / "nvidia_pytriton.libs"),
                                                    os.environ.get("LD_LIBRARY_PATH", "")]),
                "PATH": os.pathsep.join([str(env.python.parent), os.environ.get("PATH", "")])}
    log = tmp / "tritonserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env_vars, cwd=tmp,
                                start_new_session=True)
    return TritonServer(proc, http, metrics, log, argv=argv)
