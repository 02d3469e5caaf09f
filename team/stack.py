"""The team stack on one machine, on loopback, for trying team mode (docs/team.md):

    python -m team.stack up [--dir .team]     # make team-up: start everything; the client settings
                                              # go to <dir>/client.env (mode 600), not to the terminal
    python -m team.stack env [--dir .team]    # the settings as shell exports (the password included)
    python -m team.stack down [--dir .team]   # make team-down: stop everything (data kept in --dir)

What `up` starts, each on 127.0.0.1 only:
- PostgreSQL (the OS's server; its data in --dir, or, run as root, in the postgres user's home:
  PostgreSQL refuses to run as root) holding two databases, each with a role of its own that can
  reach no other: `mlflow` (the tracking store, role `mlflow`) and `mlflow_auth` (the users and
  permissions of MLflow's built-in basic authentication, role `mlflow_auth`);
- `mlflow server --app-name basic-auth` on that store, with proxied artifact storage
  (--artifacts-destination <dir>/artifacts --serve-artifacts): clients log artifacts through the
  server (`mlflow-artifacts:` locations) and need no storage credentials;
- a bare git repository (the experiments' git remote) and a DVC remote directory (the cache),
  added to this project as the remotes named `team` (git remote; DVC remote in .dvc/config.local);
- a Ray head on loopback whose `--workers` CPU slots run the study's tasks. Every port it opens
  wants Ray's token (RAY_AUTH_MODE=token; the token generated once into <dir>/ray_token, mode 600,
  clients name the file in RAY_AUTH_TOKEN_PATH); it runs no Ray Client server (ray://, 10001), and
  its session folders (logs, sockets) are in a folder only its user can enter.
The passwords are generated once and kept in <dir>/credentials.env (mode 600). No secret is ever on
a command line (every local user can read those with `ps`): the server reads its store's address
from its environment and the auth database's from <dir>/basic_auth.ini (mode 600). Nor does `up`
print one: it writes the client settings to <dir>/client.env (mode 600) and says how to load it.
State (ports, pids, paths) is in <dir>/stack.json, so `down` and `env` need nothing else; `down`
stops only the processes this stack started (other Ray clusters on the host keep running).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from stat import S_ISDIR

from spikelab.plumbing.errors import UserError, run_entry_point

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
    ray_pid: int | None = None

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
    """The generated passwords, made once: admin (MLflow) and each database role's. A file from an
    older stack gains the ones it lacks; the ones it has are kept."""
    path = stack_dir / "credentials.env"
    values = dict(line.split("=", 1) for line in path.read_text().split()) if path.exists() else {}
    wanted = {
        "MLFLOW_TRACKING_USERNAME": lambda: "admin",
        "MLFLOW_TRACKING_PASSWORD": lambda: secrets.token_urlsafe(18),
        "SPIKELAB_DB_PASSWORD": lambda: secrets.token_urlsafe(18),
        "SPIKELAB_AUTH_DB_PASSWORD": lambda: secrets.token_urlsafe(18),
        # the auth app's CSRF protection signs with it; every server of the team shares it
        "MLFLOW_FLASK_SERVER_SECRET_KEY": lambda: secrets.token_urlsafe(32),
    }
    missing = {key: make() for key, make in wanted.items() if key not in values}
    if missing:
        values.update(missing)
        private_file(path, "".join(f"{key}={value}\n" for key, value in values.items()))
    return values


def private_file(path: Path, text: str) -> None:
    """Write a file only its owner can read: created at mode 600, never readable by others for a moment."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    path.chmod(0o600)  # a file that was there before keeps its mode through O_CREAT


def ray_token(stack_dir: Path) -> Path:
    """The Ray head's token, made once: <dir>/ray_token (mode 600). Every client of the head (the
    study's driver, `ray status`) reads it from the file RAY_AUTH_TOKEN_PATH names."""
    path = stack_dir / "ray_token"
    if not path.exists() or not path.read_text().strip():
        private_file(path, secrets.token_hex(32))
    path.chmod(0o600)
    return path


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
    psql = postgres_command("psql", "-h", str(data), "-p", str(stack.postgres_port), "-U", "postgres", "-v")
    # on stdin, not in argv: the passwords stay off every command line
    script = roles_and_databases_sql(secrets_)
    run([*psql, "ON_ERROR_STOP=1", "-d", "postgres"], "creating the database roles and databases", input=script)


# database -> (its role, the credentials.env key of the role's password)
DATABASE_ROLES = {
    "mlflow": ("mlflow", "SPIKELAB_DB_PASSWORD"),
    "mlflow_auth": ("mlflow_auth", "SPIKELAB_AUTH_DB_PASSWORD"),
}


def roles_and_databases_sql(secrets_: dict[str, str]) -> str:
    """Each database owned by its own role, which can connect to it and to nothing else: a leaked
    tracking password cannot read or rewrite the users and permissions of basic auth. Re-running
    it on an older stack (one role owning both) moves the auth database and its tables over."""
    lines = []
    for database, (role, password_key) in DATABASE_ROLES.items():
        lines += [
            f"SELECT 'CREATE ROLE {role} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')\\gexec",
            f"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{secrets_[password_key]}';",
            f"SELECT 'CREATE DATABASE {database} OWNER {role}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{database}')\\gexec",
            f"ALTER DATABASE {database} OWNER TO {role};",
            f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;",
        ]
    lines.append("REVOKE ALL ON DATABASE postgres FROM PUBLIC;")
    lines += [
        "\\connect mlflow_auth",
        "DO $$ DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables "
        "WHERE schemaname = 'public' AND tableowner <> 'mlflow_auth' "
        "LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO mlflow_auth', t.tablename); END LOOP; END $$;",
    ]
    return "\n".join(lines) + "\n"


def database_uri(stack: Stack, secrets_: dict[str, str], database: str) -> str:
    """The address of one database, as its own role: it holds a password, so it goes only into
    the environment or a mode-600 file, never into argv."""
    role, password_key = DATABASE_ROLES[database]
    # the psycopg2 driver named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3
    return f"postgresql+psycopg2://{role}:{secrets_[password_key]}@{LOOPBACK}:{stack.postgres_port}/{database}"


def start_mlflow(stack: Stack, secrets_: dict[str, str]) -> int:
    stack_dir = Path(stack.dir)
    config = stack_dir / "basic_auth.ini"
    config.touch(mode=0o600)
    config.chmod(0o600)  # before it holds a password
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
        # the environment of a process is readable by its own user only; its argv by everyone
        MLFLOW_BACKEND_STORE_URI=database_uri(stack, secrets_, "mlflow"),
    )
    command = [
        *mlflow_cli(),
        "server",
        "--app-name",
        "basic-auth",
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


# Ray turns a loopback --node-ip-address into the machine's outward address unless clusters are
# off; off, Ray stays on 127.0.0.1, as one node (worker nodes cannot join it). The local stack is
# one node whose `workers` CPU slots run the tasks; a real deployment adds nodes (docs/team.md).
RAY_LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# `ray start --head` starts a Ray Client server (ray://, port 10001) whenever grpc imports, and has
# no switch to leave it off (a --ray-client-server-port below 1024 is refused). The study connects
# to the GCS (RAY_ADDRESS), never through ray://: the head is `ray start` itself with its probe for
# the client's dependencies answering "missing", which is Ray's own path for a head without one.
# The token covers the client server too; leaving it off is one listening port fewer.
RAY_START_WITHOUT_CLIENT_SERVER = (
    "import sys; import ray.scripts.scripts as cli; "
    "cli.get_ray_client_dependency_error = lambda: ImportError('the team stack runs no Ray Client server'); "
    "sys.argv[0] = 'ray'; sys.exit(cli.main())"
)


def ray_auth(stack_dir: Path) -> dict[str, str]:
    """What the head and every client of it set: Ray's token authentication, the token read from
    the stack's file (its value is never in an environment, an argv or the terminal)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(stack_dir / "ray_token")}


def ray_sessions_parent(stack_dir: Path) -> Path:
    """The folder, only this user's, that holds the head's --temp-dir: Ray makes the folder it is given
    writable by every user (as its default /tmp/ray, shared by all), so its session folders (logs,
    the raylet's and object store's sockets, spilled objects) need a parent no one else can enter.
    Short, under /tmp, one per stack: a socket's path must fit in 107 bytes, the session's name takes 40."""
    return Path("/tmp") / f"spikelab-ray-{stack_tag(stack_dir)}"


def ray_temp_dir(stack_dir: Path) -> Path:
    """The head's --temp-dir, inside ray_sessions_parent, which is made (or checked) mode 700 first."""
    parent = ray_sessions_parent(stack_dir)
    try:
        parent.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = parent.lstat()  # a link is not followed: it may lead anywhere
    if not S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise StackError(
            f"team stack: {parent} is not a folder of this user's (someone else made it?): remove it and run `up` again"
        )
    parent.chmod(0o700)
    return parent / "ray"


def stack_tag(stack_dir: Path) -> str:
    """A short name of the stack's folder, for what lives outside it (its database, Ray's sessions)."""
    return hashlib.sha1(str(stack_dir).encode()).hexdigest()[:10]


def start_ray(stack: Stack) -> int:
    """The Ray head in the foreground (--block) of a session of its own: its daemons stay its children,
    so `down` stops this head and what it started, and no other Ray cluster on the host. Token
    authentication on: the GCS, the raylet's node and object managers, the workers' and the agents'
    ports refuse a caller without the stack's token (docs/team.md lists them)."""
    stack_dir = Path(stack.dir)
    ray_token(stack_dir)
    command = [sys.executable, "-c", RAY_START_WITHOUT_CLIENT_SERVER, "start", "--head", "--block"]
    command += ["--port", str(stack.ray_port), "--node-ip-address", LOOPBACK, "--num-cpus", str(stack.workers)]
    command += ["--include-dashboard", "false", "--disable-usage-stats"]
    command += ["--temp-dir", str(ray_temp_dir(stack_dir))]
    log = stack_dir / "ray.log"
    log.write_bytes(b"")
    # a token in the caller's environment would win over the file (Ray reads RAY_AUTH_TOKEN first)
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_TOKEN"}
    env.update(RAY_LOOPBACK_ONLY, **ray_auth(stack_dir))
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_until(lambda: b"Ray runtime started." in log.read_bytes(), "the Ray head", log, process)
    return process.pid


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
    """What a client sets to use the stack: the tracking server and its credentials, the Ray head and
    the file of its token (the path, not the token)."""
    secrets_ = credentials(Path(stack.dir))
    return {
        "MLFLOW_TRACKING_URI": stack.tracking_uri,
        "MLFLOW_TRACKING_USERNAME": secrets_["MLFLOW_TRACKING_USERNAME"],
        "MLFLOW_TRACKING_PASSWORD": secrets_["MLFLOW_TRACKING_PASSWORD"],
        "RAY_ADDRESS": stack.ray_address,
        **ray_auth(Path(stack.dir)),
        **RAY_LOOPBACK_ONLY,
    }


def exports(settings: dict[str, str]) -> str:
    """The settings as shell lines: `eval "$(...)"` or `. <file>` sets them."""
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in settings.items())


def write_client_env(stack: Stack) -> Path:
    """<dir>/client.env (mode 600): the client settings, the password among them, for `. <file>`;
    `up` names the file instead of printing a secret to the terminal (and its scrollback and logs)."""
    path = Path(stack.dir) / "client.env"
    private_file(path, exports(client_settings(stack)))
    return path


def up(stack_dir: Path, workers: int, ports: dict[str, int]) -> Stack:
    stack_dir = stack_dir.resolve()
    stack_dir.mkdir(parents=True, exist_ok=True)
    if (stack_dir / "stack.json").exists():
        down(stack_dir)  # a stale stack (a crash, a reboot): start clean on the same data
    secrets_ = credentials(stack_dir)
    # as root, the data lives where the postgres user can reach it (its home), one folder per stack
    data = Path("/var/lib/postgresql/spikelab") / stack_tag(stack_dir) if as_root() else stack_dir / "postgres"
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
    stack.ray_pid = start_ray(stack)
    save_stack(stack)
    make_remotes(stack)
    print(f"team stack: git remote `team` = {stack.git_remote}; DVC remote `team` = {stack.dvc_remote}")
    return stack


def descendants(pid: int) -> set[int]:
    """Every living process below pid (Ray's workers run in process groups of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def started_here(pid: int, *words: str) -> bool:
    """Whether process pid runs a command line holding all these words."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return all(word in arguments for word in words)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace_s: float = 20.0, leader_first: bool = False) -> None:
    """SIGTERM a process group this stack started (the server with its uvicorn workers, job runner
    and huey consumers; or the Ray head with its daemons), wait for every member and descendant to
    exit, SIGKILL what is left after grace_s: `down` returns with none running. leader_first: only
    the leader gets SIGTERM (`ray start --block` then stops its own daemons in order)."""
    members = descendants(pgid) | {pgid}
    try:
        if leader_first:
            os.kill(pgid, signal.SIGTERM)
        else:
            os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(pid) for pid in members):
        members |= {child for pid in list(members) if alive(pid) for child in descendants(pid)}
        time.sleep(0.2)
    for pid in (pid for pid in members if alive(pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def down(stack_dir: Path, purge: bool = False) -> None:
    stack = load_stack(stack_dir.resolve())
    # a pid from stack.json is signalled only while it still runs what this stack started there (after
    # a reboot the number may belong to anything)
    if stack.ray_pid and started_here(stack.ray_pid, "start", "--port", str(stack.ray_port)):
        stop_group(stack.ray_pid, leader_first=True)
    elif not stack.ray_pid:  # an older stack's detached head: `ray stop` would stop every cluster here
        print("team stack: this stack's Ray head is not known by pid; stop it with `ray stop` if it runs")
    if stack.mlflow_pid and started_here(stack.mlflow_pid, "server", "--port", str(stack.mlflow_port)):
        stop_group(stack.mlflow_pid)
    data = Path(stack.postgres_data)
    if (data / "postmaster.pid").exists():
        subprocess.run(postgres_command("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"), capture_output=True)
    (Path(stack.dir) / "stack.json").unlink()
    if purge:  # the databases, artifacts, remotes, credentials and Ray's logs: gone for good
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(stack.dir, ignore_errors=True)
        sessions = ray_sessions_parent(Path(stack.dir))
        if sessions.is_dir() and not sessions.is_symlink() and sessions.stat().st_uid == os.geteuid():
            shutil.rmtree(sessions, ignore_errors=True)
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
        path = write_client_env(stack)
        # the password is not printed: a terminal's scrollback, a CI log or a screen share keeps it
        print(f"team stack: up; the client settings (the MLflow password too) are in {path} (mode 600)")
        print("# load them into this shell with (or print them: python -m team.stack env):")
        print(f". {shlex.quote(str(path))}")
    elif args.command == "down":
        down(args.dir, args.purge)
    else:
        stack = load_stack(args.dir.resolve())
        print('# the client settings (eval "$(python -m team.stack env)"):')
        print(exports(client_settings(stack)), end="")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
