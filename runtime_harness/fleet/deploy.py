"""Flower's Deployment Engine on this machine: one SuperLink and K SuperNode processes on
loopback, the app submitted with `flwr run`. Each SuperNode is one client (one phone): its own
OS process, which starts the ClientApp in a child process of its own for the messages it gets.

What runs where, and why:
- Transport. Flower 1.42 serves the Fleet API (SuperNodes), the Control API (`flwr run`) and the
  ServerApp's runtime API over HTTP on one SuperLink port (earlier releases used gRPC there); the
  SuperNodes poll it and send heartbeats.
- TLS (the default). A certificate authority and a server certificate for 127.0.0.1 are made at
  start (EC P-256, valid one day, in the work folder); the SuperLink serves HTTPS with them, and
  every SuperNode and `flwr run` verify it against that CA. Loopback needs no public CA, and a
  fresh CA per deployment means no key outlives it. `tls=False` runs plain HTTP.
- No network. The SuperLink's run-time installation of an app's dependencies (`uv sync`) is
  turned off (the SuperNodes' is off by default): the app is dcl itself, already installed.
  Telemetry is off. FLWR_HOME is the work folder, so nothing of the user's Flower set-up is read.
- A node that dies is noticed by missing heartbeats: the SuperLink answers its pending message
  with an error after two heartbeat intervals (Flower's interval is 30 s), and the round goes on
  with the others.

`Deployment` starts and stops the processes; `submit` runs the app and watches the SuperLink:
if the SuperLink process ends before the app has finished, it raises `SuperLinkLost`.
"""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dcl_core.errors import DclError

ENGINE_DEPLOYMENT = "flower-deployment"
CONNECTION = "dcl"  # the SuperLink's name in the work folder's Flower config
TAG = "DCL_FLEET_DEPLOYMENT"
START_TIMEOUT_S = 120.0


class SuperLinkLost(DclError):
    """The SuperLink process ended while the app was running."""


@dataclass
class Deployment:
    """A SuperLink and `supernodes` SuperNode processes; `node_config(k)` is node k's config
    (Flower's `--node-config`, e.g. its partition). Use as a context manager."""

    app: Path  # the Flower app folder (its pyproject.toml has [tool.flwr.app])
    supernodes: int
    work: Path  # certificates, FLWR_HOME, every process's log
    node_config: Callable[[int], dict[str, int | str]]
    tls: bool = True
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every process
    superlink: subprocess.Popen | None = None
    nodes: list[subprocess.Popen] = field(default_factory=list)
    port: int = 0
    # every process of this deployment carries it in its environment: what Flower starts in a
    # session of its own (the ServerApp) or leaves behind when its parent is killed is found by it
    tag: str = field(default_factory=lambda: secrets.token_hex(8))

    # -- processes
    def __enter__(self) -> Deployment:
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        home = self.work / "flwr-home"
        home.mkdir(exist_ok=True)
        self.port = free_port()
        tls_args, trust = [], []
        if self.tls:
            ca, cert, key = make_certificates(self.work / "tls")
            tls_args = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-ca-certfile", str(ca)]
            trust = ["--root-certificates", str(ca)]
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\n'
            + (f'root-certificates = "{self.work / "tls" / "ca.pem"}"\n' if self.tls else "insecure = true\n"))
        insecure = [] if self.tls else ["--insecure"]
        self.superlink = self._spawn("superlink", ["flower-superlink", *insecure, *tls_args, "--host", "127.0.0.1",
                                                   "--port", str(self.port), "--disable-runtime-dependency-installation"])
        wait_for_port(self.port, self.superlink, self.work / "superlink.log")
        for k in range(self.supernodes):
            config = " ".join(f"{key}={_toml_value(v)}" for key, v in self.node_config(k).items())
            self.nodes.append(self._spawn(f"supernode-{k}", [
                "flower-supernode", *insecure, *trust, "--superlink", f"127.0.0.1:{self.port}",
                "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", config]))

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        bin_dir = Path(sys.executable).parent  # Flower's commands of this environment
        log = open(self.work / f"{name}.log", "ab")
        # a session of its own: stopping it stops the helpers it starts (SuperExec, app processes)
        return subprocess.Popen([str(bin_dir / argv[0]), *argv[1:]], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=self._env(), start_new_session=True)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.env, "FLWR_HOME": str(self.work / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
               TAG: self.tag}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def stop(self) -> None:
        for proc in [*self.nodes, self.superlink]:
            if proc is not None and proc.poll() is None:
                _kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in [*self.nodes, self.superlink]:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
            _kill_group(proc, signal.SIGKILL)  # what it started and left behind
        for pid in tagged_processes(self.tag):  # what left its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    # -- the app
    def submit(self, run_config: dict[str, int | float | str], done: Callable[[], bool],
               poll: Callable[[], None] = lambda: None, timeout_s: float = 24 * 3600) -> None:
        """`flwr run` the app with `run_config`; returns once `done()` says the app has finished.
        Raises SuperLinkLost if the SuperLink ends first, DclError if `flwr run` fails."""
        import tomli_w  # Flower's own dependency

        overrides = self.work / "run-config.toml"  # a file: values (paths) may hold spaces
        overrides.write_text(tomli_w.dumps(run_config))
        log_path = self.work / "flwr-run.log"
        runner = self._spawn("flwr-run", ["flwr", "run", str(self.app), CONNECTION, "--run-config", str(overrides),
                                          "--stream"])
        deadline = time.monotonic() + timeout_s
        try:
            while not done():
                poll()
                if self.superlink is not None and self.superlink.poll() is not None:
                    raise SuperLinkLost(f"the Flower SuperLink stopped (exit {self.superlink.returncode})")
                if runner.poll() is not None and not done():
                    time.sleep(1.0)  # the app's last write may trail the stream's end
                    if done():
                        break
                    tail = _tail(log_path)
                    raise DclError(f"`flwr run` ended before the app finished: {tail or 'no output'}; "
                                   f"see {self.work}/*.log")
                if time.monotonic() > deadline:
                    raise DclError(f"the Flower deployment did not finish within {timeout_s:.0f} s; see {self.work}/*.log")
                time.sleep(0.5)
            poll()
        finally:
            if runner.poll() is None:
                _kill_group(runner, signal.SIGTERM)
                runner.wait()


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it: (ca.pem, server.pem,
    server.key). The CA's key is never written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dcl fleet CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1]).add_extension(san, critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def tagged_processes(tag: str) -> list[int]:
    """Processes whose environment holds TAG=tag (Linux /proc; elsewhere none are found)."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DclError(f"the Flower SuperLink did not start: {_tail(log) or 'no output'}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DclError(f"the Flower SuperLink did not open port {port} within {START_TIMEOUT_S:.0f} s; see {log}")


def _toml_value(v: int | float | str) -> str:
    return json.dumps(v)  # a TOML basic string, integer, float or boolean


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path) -> str:
    """The last error-looking line of a log (or its last line), for a one-line message."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [""])[-1][:300]
