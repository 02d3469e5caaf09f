"""The team stack on one machine, on loopback, for trying team mode (docs/team.md):

    python -m team.stack up [--dir .team]     # make team-up: start everything, print the client settings
    python -m team.stack env [--dir .team]    # the settings again, as shell exports
    python -m team.stack down [--dir .team]   # make team-down: stop everything (data kept in --dir)

What `up` starts, each on 127.0.0.1 only:
- PostgreSQL (the OS's server; its data in --dir, or, run as root, in the postgres user's home:
  PostgreSQL refuses to run as root) holding two databases: `mlflow` (the tracking store) and
  `mlflow_auth` (the users and permissions of MLflow's built-in basic authentication);
- `mlflow server --app-name basic-auth` on that store, with proxied artifact storage
  (--artifacts-destination <dir>/artifacts --serve-artifacts): clients log artifacts through the
  server (`mlflow-artifacts:` locations) and need no storage credentials;
- a bare git repository (the experiments' git remote) and a DVC remote directory (the cache),
  added to this project as the remotes named `team` (git remote; DVC remote in .dvc/config.local);
- a Ray head on loopback whose `--workers` CPU slots run the study's tasks.
The admin password is generated once and kept in <dir>/credentials.env (mode 600).
State (ports, pids, paths) is in <dir>/stack.json, so `down` and `env` need nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from spikelab.errors import UserError, run_entry_point

DEFAULT_DIR = Path(".team")
LOOPBACK = "127.0.0.1"
STARTUP_S = 90.0


class StackError(UserError, RuntimeError):
    """A part of the stack that cannot start or stop; the message names it and the log to read."""


@dataclass
class Stack:
    dir: str
    postgres_data: str
    postgres_port: int
    mlflow_port: int
    ray_port: int
    workers: int
    git_remote: str
    dvc_remote: str
    mlflow_pid: int | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.mlflow_port}"

    @property
    def ray_address(self) -> str:
        return f"{LOOPBACK}:{self.ray_port}"


# ---- running things -------------------------------------------------------------------------------


def as_root() -> bool:
    return os.geteuid() == 0


def postgres_command(*args: str) -> list[str]:
    """A PostgreSQL binary, as the postgres user when we are root (the server refuses root)."""
    binary = shutil.which(args[0]) or str(Path("/usr/lib/postgresql") / newest_postgres() / "bin" / args[0])
    command = [binary, *args[1:]]
    return ["runuser", "-u", "postgres", "--", *command] if as_root() else command


def newest_postgres() -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise StackError("PostgreSQL is not installed: run `make team-setup` (apt-get install postgresql)")
    return versions[-1].parts[-3]


def run(command: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StackError(f"team stack: {what} failed (exit {result.returncode}): {tail[0]}")
    return result


def wait_until(check, what: str, log: Path, process: subprocess.Popen, timeout_s: float = STARTUP_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if process.poll() is not None:
            raise StackError(f"team stack: {what} exited ({process.returncode}) while starting; see {log}")
        time.sleep(0.5)
    raise StackError(f"team stack: {what} did not come up in {timeout_s:.0f} s; see {log}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


# ---- the parts ---------------------------------------------------------------------------------------


def credentials(stack_dir: Path) -> dict[str, str]:
    """The generated passwords, made once: admin (MLflow) and the database role's."""
    path = stack_dir / "credentials.env"
    if not path.exists():
        values = {
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(18),
            "SPIKELAB_DB_PASSWORD": secrets.token_urlsafe(18),
            # the auth app's CSRF protection signs with it; every server of the team shares it
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
        }
        path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
        path.chmod(0o600)
    return dict(line.split("=", 1) for line in path.read_text().split())


def start_postgres(stack: Stack, secrets_: dict[str, str]) -> None:
    data = Path(stack.postgres_data)
    log = data / "postgres.log"  # beside the data: the postgres user may not reach the stack's folder
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if as_root():
            shutil.chown(data, "postgres", "postgres")
        data.chmod(0o700)
        # local (unix socket) connections by the postgres OS user only; TCP with a password
        run(
            postgres_command(
                "initdb", "-D", str(data), "-U", "postgres", "--auth-local=peer", "--auth-host=scram-sha-256"
            ),
            "initdb",
        )
    options = f"-c listen_addresses={LOOPBACK} -c port={stack.postgres_port} -c unix_socket_directories={data}"
    run(
        postgres_command("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "start"),
        f"PostgreSQL start (log {log})",
    )
    password = secrets_["SPIKELAB_DB_PASSWORD"]
    script = (
        "SELECT 'CREATE ROLE mlflow LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow')\\gexec\n"
        f"ALTER ROLE mlflow PASSWORD '{password}';\n"
        "SELECT 'CREATE DATABASE mlflow OWNER mlflow' WHERE NOT EXISTS "
        "(SELECT FROM pg_database WHERE datname = 'mlflow')\\gexec\n"
        "SELECT 'CREATE DATABASE mlflow_auth OWNER mlflow' WHERE NOT EXISTS "
        "(SELECT FROM pg_database WHERE datname = 'mlflow_auth')\\gexec\n"
    )
    psql = postgres_command("psql", "-h", str(data), "-p", str(stack.postgres_port), "-U", "postgres", "-v")
    run([*psql, "ON_ERROR_STOP=1", "-d", "postgres"], "creating the mlflow role and databases", input=script)


def database_uri(stack: Stack, secrets_: dict[str, str], database: str) -> str:
    # the psycopg2 driver named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3
    return (
        f"postgresql+psycopg2://mlflow:{secrets_['SPIKELAB_DB_PASSWORD']}@{LOOPBACK}:{stack.postgres_port}/{database}"
    )


def start_mlflow(stack: Stack, secrets_: dict[str, str]) -> int:
    stack_dir = Path(stack.dir)
    config = stack_dir / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri(stack, secrets_, 'mlflow_auth')}\n"
        f"admin_username = {secrets_['MLFLOW_TRACKING_USERNAME']}\n"
        f"admin_password = {secrets_['MLFLOW_TRACKING_PASSWORD']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    config.chmod(0o600)
    log = stack_dir / "mlflow.log"
    env = dict(
        os.environ,
        MLFLOW_AUTH_CONFIG_PATH=str(config),
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets_["MLFLOW_FLASK_SERVER_SECRET_KEY"],
    )
    command = [
        *mlflow_cli(),
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        database_uri(stack, secrets_, "mlflow"),
        "--artifacts-destination",
        str((stack_dir / "artifacts").resolve()),
        "--serve-artifacts",
        "--host",
        LOOPBACK,
        "--port",
        str(stack.mlflow_port),
        "--workers",
        "1",
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_until(lambda: http_ok(f"{stack.tracking_uri}/health"), "the MLflow server", log, process)
    return process.pid


def mlflow_cli() -> list[str]:
    return [str(Path(sys.executable).parent / "mlflow")]


def ray_cli() -> list[str]:
    return [str(Path(sys.executable).parent / "ray")]


# Ray turns a loopback --node-ip-address into the machine's outward address unless clusters are
# off; off, Ray stays on 127.0.0.1, as one node (worker nodes cannot join it). The local stack is
# one node whose `workers` CPU slots run the tasks; a real deployment adds nodes (docs/team.md).
RAY_LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def start_ray(stack: Stack) -> None:
    command = [*ray_cli(), "start", "--head", "--port", str(stack.ray_port), "--node-ip-address", LOOPBACK]
    command += ["--num-cpus", str(stack.workers), "--include-dashboard", "false", "--disable-usage-stats"]
    run(command, "the Ray head", env=dict(os.environ, **RAY_LOOPBACK_ONLY))


def make_remotes(stack: Stack) -> None:
    git_remote, dvc_remote = Path(stack.git_remote), Path(stack.dvc_remote)
    if not (git_remote / "HEAD").exists():
        run(["git", "init", "--quiet", "--bare", str(git_remote)], "git init --bare")
    dvc_remote.mkdir(parents=True, exist_ok=True)
    # this project knows them as `team`; the DVC remote in the untracked local config
    if subprocess.run(["git", "remote", "get-url", "team"], capture_output=True).returncode == 0:
        run(["git", "remote", "set-url", "team", str(git_remote)], "git remote set-url team")
    else:
        run(["git", "remote", "add", "team", str(git_remote)], "git remote add team")
    run(["dvc", "remote", "add", "--local", "--force", "team", str(dvc_remote)], "dvc remote add team")


# ---- commands --------------------------------------------------------------------------------------


def load_stack(stack_dir: Path) -> Stack:
    path = stack_dir / "stack.json"
    if not path.exists():
        raise StackError(f"team stack: no stack in {stack_dir} (start one with `python -m team.stack up`)")
    return Stack(**json.loads(path.read_text()))


def save_stack(stack: Stack) -> None:
    (Path(stack.dir) / "stack.json").write_text(json.dumps(asdict(stack), indent=2) + "\n")


def client_settings(stack: Stack) -> dict[str, str]:
    """What a client sets to use the stack: the tracking server and its credentials, the Ray head."""
    secrets_ = credentials(Path(stack.dir))
    return {
        "MLFLOW_TRACKING_URI": stack.tracking_uri,
        "MLFLOW_TRACKING_USERNAME": secrets_["MLFLOW_TRACKING_USERNAME"],
        "MLFLOW_TRACKING_PASSWORD": secrets_["MLFLOW_TRACKING_PASSWORD"],
        "RAY_ADDRESS": stack.ray_address,
        **RAY_LOOPBACK_ONLY,
    }


def up(stack_dir: Path, workers: int, ports: dict[str, int]) -> Stack:
    stack_dir = stack_dir.resolve()
    stack_dir.mkdir(parents=True, exist_ok=True)
    if (stack_dir / "stack.json").exists():
        down(stack_dir)  # a stale stack (a crash, a reboot): start clean on the same data
    secrets_ = credentials(stack_dir)
    # as root, the data lives where the postgres user can reach it (its home), one folder per stack
    tag = hashlib.sha1(str(stack_dir).encode()).hexdigest()[:10]
    data = Path("/var/lib/postgresql/spikelab") / tag if as_root() else stack_dir / "postgres"
    if as_root():
        data.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(data.parent, "postgres", "postgres")
    stack = Stack(
        dir=str(stack_dir),
        postgres_data=str(data),
        postgres_port=ports.get("postgres") or free_port(),
        mlflow_port=ports.get("mlflow") or free_port(),
        ray_port=ports.get("ray") or free_port(),
        workers=workers,
        git_remote=str(stack_dir / "experiments.git"),
        dvc_remote=str(stack_dir / "dvc-cache"),
    )
    save_stack(stack)  # before starting anything: `down` can then stop what did start
    print(f"team stack: PostgreSQL on {LOOPBACK}:{stack.postgres_port} (data {data})", flush=True)
    start_postgres(stack, secrets_)
    print(f"team stack: MLflow server with basic auth on {stack.tracking_uri}", flush=True)
    stack.mlflow_pid = start_mlflow(stack, secrets_)
    save_stack(stack)
    print(f"team stack: Ray head on {stack.ray_address}, {workers} tasks at a time", flush=True)
    start_ray(stack)
    make_remotes(stack)
    print(f"team stack: git remote `team` = {stack.git_remote}; DVC remote `team` = {stack.dvc_remote}")
    return stack


def stop_group(pgid: int, grace_s: float = 20.0) -> None:
    """SIGTERM a process group (the server, its uvicorn workers, job runner and huey consumers), wait
    for every member to exit, SIGKILL what is left after grace_s: `down` returns with none running."""
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)  # raises once the group is empty
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def down(stack_dir: Path, purge: bool = False) -> None:
    stack = load_stack(stack_dir.resolve())
    subprocess.run([*ray_cli(), "stop", "--force"], capture_output=True, env=dict(os.environ, **RAY_LOOPBACK_ONLY))
    if stack.mlflow_pid:
        stop_group(stack.mlflow_pid)
    data = Path(stack.postgres_data)
    if (data / "postmaster.pid").exists():
        subprocess.run(postgres_command("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"), capture_output=True)
    (Path(stack.dir) / "stack.json").unlink()
    if purge:  # the databases, artifacts, remotes and credentials: gone for good
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(stack.dir, ignore_errors=True)
        print(f"team stack: stopped; {stack.dir} and {data} deleted")
    else:
        print(f"team stack: stopped (data kept in {stack.dir} and {data})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m team.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "env"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the stack keeps its data and state")
    parser.add_argument("--purge", action="store_true", help="down: delete the stack's data too")
    parser.add_argument("--workers", type=int, default=2, help="tasks the Ray head runs at once")
    for name, default in (("postgres", 5433), ("mlflow", 5055), ("ray", 6380)):
        parser.add_argument(f"--{name}-port", type=int, default=default, help="0: any free port")
    args = parser.parse_args(argv)
    if args.command == "up":
        ports = {"postgres": args.postgres_port, "mlflow": args.mlflow_port, "ray": args.ray_port}
        stack = up(args.dir, args.workers, ports)
    elif args.command == "down":
        down(args.dir, args.purge)
        return 0
    else:
        stack = load_stack(args.dir.resolve())
    print("# the client settings (also: python -m team.stack env):")
    for key, value in client_settings(stack).items():
        print(f"export {key}={value}")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
