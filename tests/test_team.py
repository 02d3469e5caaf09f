"""Team mode for real, on loopback: the project's stack (PostgreSQL, the MLflow server with basic
auth and proxied artifacts, a bare git remote, a DVC remote, Ray), a small study submitted through
Ray from one clone, run in the workers' own clones, collected in a third clone."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY, lab_env, make_lab, run
from spikelab.metric_names import mlflow_key

pytestmark = pytest.mark.slow

TEAM_SWEEP = """\
prefix: teamtest
seeds: [0, 1]
cells:
  baseline: {}
  eps-1e-2: {optimizer.epsilon: 1.0e-2}
  # the params validator refuses adamw without weight_decay in the train stage: a run that fails
  adamw-no-decay: {optimizer.name: adamw}
"""
# one run long enough to lose its tracking server in the middle
OUTAGE_SWEEP = """\
prefix: teamoutage
seeds: [0]
cells:
  long: {train.epochs: 400}
"""
NAMES = [f"teamtest-{cell}-s{seed}" for seed in (0, 1) for cell in ("baseline", "eps-1e-2", "adamw-no-decay")]


def postgres_installed() -> bool:
    return shutil.which("initdb") is not None or any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


@pytest.fixture(scope="module")
def team_lab(tmp_path_factory):
    """One stack for the module's tests (starting one costs ~30 s); torn down after the last."""
    if not postgres_installed():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing on CI: .ci/run runs `make team-setup` first")
        pytest.skip("PostgreSQL is not installed (make team-setup)")
    tmp_path = tmp_path_factory.mktemp("team")
    raw = copy.deepcopy(TINY)
    raw["train"]["epochs"] = 3
    lab = make_lab(tmp_path / "head", raw)
    (lab / "study" / "team_test.yaml").write_text(TEAM_SWEEP)
    (lab / "study" / "team_outage.yaml").write_text(OUTAGE_SWEEP)
    run(["git", "add", "study"], lab)
    run(["git", "commit", "-qm", "the team tests' studies"], lab)
    stack_dir = tmp_path / "stack"
    try:
        up = run(["python", "-m", "team.stack", "up", "--dir", str(stack_dir), "--workers", "2", *free_ports()], lab)
    except AssertionError:  # a part that did not come up in time: stop the parts that did
        run(["python", "-m", "team.stack", "down", "--dir", str(stack_dir), "--purge"], lab, check=False)
        raise
    (tmp_path / "up.out").write_text(up.stdout + up.stderr)  # what `up` printed, for the secrets test
    env = lab_env(lab)
    env.update(settings_printed_by_env(lab, stack_dir))
    yield lab, stack_dir, env
    if (stack_dir / "stack.json").exists():  # a test failed before the teardown test
        run(["python", "-m", "team.stack", "down", "--dir", str(stack_dir), "--purge"], lab, check=False)


def free_ports() -> list[str]:
    return ["--postgres-port", "0", "--mlflow-port", "0", "--ray-port", "0"]


def settings_printed_by_env(lab: Path, stack_dir: Path) -> dict[str, str]:
    """The client settings, as a script gets them: the exports `python -m team.stack env` prints."""
    printed = run(["python", "-m", "team.stack", "env", "--dir", str(stack_dir)], lab).stdout
    lines = [line.removeprefix("export ") for line in printed.splitlines() if line.startswith("export ")]
    return {key: shlex.split(value)[0] for key, value in (line.split("=", 1) for line in lines)}


def kill_one_running_task(deadline_s: float) -> bool:
    """SIGKILL a Ray worker while it runs a task's training (its `dvc exp run` child is up)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if title.startswith(b"ray::run_one") and training_below(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
                return True
        time.sleep(0.5)
    return False


def training_below(pid: int) -> bool:
    result = subprocess.run(["pgrep", "-f", "-P", str(pid), "dvc exp run"], capture_output=True)
    return result.returncode == 0


def as_nobody(*command: str) -> subprocess.CompletedProcess:
    """A command run by another local user, one with no rights on anything of the stack's."""
    become = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    return subprocess.run([*become, *command], capture_output=True, text=True, cwd="/")


# first: the outage test below kills the server whose command line and environment this one reads
def test_no_secret_reaches_another_local_user_and_each_database_has_its_own_role(team_lab):
    lab, stack_dir, _ = team_lab
    if os.geteuid() != 0:
        pytest.skip("becoming another local user needs root (CI runs as root)")
    stack = json.loads((stack_dir / "stack.json").read_text())
    secrets_ = dict(line.split("=", 1) for line in (stack_dir / "credentials.env").read_text().split())
    hidden = [value for key, value in secrets_.items() if key != "MLFLOW_TRACKING_USERNAME"]
    hidden.append((stack_dir / "ray_token").read_text().strip())  # the Ray head's token
    # every process's argv is readable by every user: no secret in any of them (-ww: whole lines, as
    # ps cuts them at $COLUMNS otherwise)
    listing = as_nobody("ps", "-ww", "-eo", "args")
    server = [line for line in listing.stdout.splitlines() if f"--port {stack['mlflow_port']}" in line]
    assert listing.returncode == 0 and server and str(stack["mlflow_port"]) in server[0], listing.stderr
    leaked = [line for line in listing.stdout.splitlines() if any(value in line for value in hidden)]
    assert not leaked, leaked
    # the server's environment (where its store's address is) and the files holding secrets are not
    assert as_nobody("cat", f"/proc/{stack['mlflow_pid']}/environ").returncode != 0
    for name in ("credentials.env", "basic_auth.ini"):
        assert (stack_dir / name).stat().st_mode & 0o777 == 0o600, name

    # the tracking role reaches the tracking store only; the auth role the auth database only
    import psycopg2

    def connects(role: str, password_key: str, database: str) -> bool:
        try:
            psycopg2.connect(
                host="127.0.0.1",
                port=stack["postgres_port"],
                user=role,
                password=secrets_[password_key],
                dbname=database,
                connect_timeout=10,
            ).close()
        except psycopg2.OperationalError as error:
            assert "permission denied" in str(error), error
            return False
        return True

    assert connects("mlflow", "SPIKELAB_DB_PASSWORD", "mlflow")
    assert not connects("mlflow", "SPIKELAB_DB_PASSWORD", "mlflow_auth")
    assert connects("mlflow_auth", "SPIKELAB_AUTH_DB_PASSWORD", "mlflow_auth")
    assert not connects("mlflow_auth", "SPIKELAB_AUTH_DB_PASSWORD", "mlflow")
    # ... and the auth role owns the users table the server made, so the server needs nothing more
    owner = subprocess.run(
        ["runuser", "-u", "postgres", "--"]
        + ["psql", "-h", stack["postgres_data"], "-p", str(stack["postgres_port"]), "-U", "postgres"]
        + ["-d", "mlflow_auth", "-tAc", "SELECT tableowner FROM pg_tables WHERE tablename = 'users'"],
        capture_output=True,
        text=True,
    )
    assert owner.stdout.strip() == "mlflow_auth", owner.stderr


# Run as another local user with Ray importable: what the head's ports answer a caller without the
# token. The Ray Client server (ray://) and the GCS are tried as Ray's own clients use them; every
# port with an unauthenticated call of each of Ray's gRPC services and a plain HTTP request.
RAY_PROBE = r"""
import json, os, socket, sys, urllib.error, urllib.request
import grpc

client_port, gcs_port, ports = int(sys.argv[1]), int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
METHODS = [
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo", "/ray.rpc.InternalKVGcsService/InternalKVKeys",
    "/ray.rpc.NodeManagerService/GetNodeStats", "/ray.rpc.ObjectManagerService/Pull",
    "/ray.rpc.CoreWorkerService/GetCoreWorkerStats", "/ray.rpc.RayletDriver/ClusterInfo",
    "/ray.rpc.ReporterService/GetProfilingStats", "/ray.rpc.LogService/ListLogs",
]

def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except OSError:
        return False

def short(error):
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"[:300]

out = {"client": "not tried", "ports": {}}
if client_port:
    if not listening(client_port):
        out["client"] = "refused: nothing listens"
    else:
        import ray
        try:
            ray.init(address=f"ray://127.0.0.1:{client_port}", log_to_driver=False)
            out["client"] = f"ran a task as uid {ray.get(ray.remote(lambda: os.geteuid()).remote(), timeout=60)}"
        except Exception as error:
            out["client"] = "refused: " + short(error)
from ray._raylet import GcsClient
try:
    keys = GcsClient(address=f"127.0.0.1:{gcs_port}").internal_kv_keys(b"", None, timeout=10)
    out["gcs"] = f"read {len(keys)} keys of its store (where the functions that tasks run are kept)"
except Exception as error:
    out["gcs"] = "refused: " + short(error)
for port in ports:
    if not listening(port):
        out["ports"][port] = "closed"
        continue
    answers = {}
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    for method in METHODS:
        try:
            channel.unary_unary(method)(b"", timeout=10)
            answers[method] = "OK"
        except grpc.RpcError as error:
            answers[method] = error.code().name
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            answers["http"] = response.status
    except urllib.error.HTTPError as error:
        answers["http"] = error.code
    except Exception as error:
        answers["http"] = type(error).__name__
    out["ports"][port] = {k: v for k, v in answers.items() if v != "UNIMPLEMENTED"}
print(json.dumps(out))
"""


def listening_ports(pids: set[int]) -> dict[int, str]:
    """{TCP port: 'command (pid, address)'} for every socket these processes listen on."""
    import ipaddress

    def address(hex_: str) -> str:  # /proc/net/tcp*: 32-bit words in host (little-endian) order
        raw = bytes.fromhex(hex_)
        ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
        return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)

    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                host, port = fields[1].rsplit(":", 1)
                sockets[f"socket:[{fields[9]}]"] = (int(port, 16), address(host))
    found = {}
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:  # it ended meanwhile
            continue
        for port, host in (sockets[link] for link in links if link in sockets):
            found[port] = f"{Path(name).name} (pid {pid}, on {host})"
    return found


def port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return False
    return True


def nobody_python() -> list[str] | None:
    """`env -i ... python` for `nobody`: a Python of this version that it may run, importing the venv's
    Ray; None if there is none (the venv's interpreter may live in root's home, mode 700)."""
    import importlib.util

    site_packages = Path(importlib.util.find_spec("ray").origin).parent.parent
    clean = ["env", "-i", "PATH=/usr/bin:/bin", "HOME=/nonexistent", f"PYTHONPATH={site_packages}"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in dict.fromkeys([os.path.realpath(sys.executable), f"/usr/bin/{version}", f"/usr/local/bin/{version}"]):
        if as_nobody(*clean, python, "-c", "import ray._raylet, grpc").returncode == 0:
            return [*clean, python]
    return None


def test_no_ray_port_runs_anything_for_another_local_user_and_the_owner_runs_with_the_token(team_lab):
    """Ray's ports are on 127.0.0.1, which every local user reaches. Without token authentication
    `nobody` ran tasks as the stack's owner through ray://127.0.0.1:10001 and read the GCS's store
    (where the functions that tasks run are kept). Now there is no Ray Client server, and every port
    of the head refuses a caller without the token; the owner with RAY_AUTH_TOKEN_PATH runs a task."""
    from team.stack import descendants

    lab, stack_dir, env = team_lab
    if os.geteuid() != 0:
        pytest.skip("becoming another local user needs root (CI runs as root)")
    stack = json.loads((stack_dir / "stack.json").read_text())
    # the owner, with the settings `env` prints, runs a task (its workers then listen on ports too)
    task = "import os, ray; ray.init(log_to_driver=False); print(ray.get(ray.remote(lambda: os.geteuid()).remote()))"
    ran = subprocess.run(["python", "-c", task], cwd=lab, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and ran.stdout.split()[-1] == str(os.geteuid()), ran.stderr[-2000:]

    head = {stack["ray_pid"]} | descendants(stack["ray_pid"])
    ports = listening_ports(head)
    # ray:// at Ray's default client port, unless a program outside the stack holds it
    client_port = 10001 if 10001 in ports or not port_open(10001) else 0
    python = nobody_python()
    if python is None:
        pytest.skip("`nobody` can run no Python that imports this venv's Ray (its interpreter is out of reach)")
    arguments = [str(client_port), str(stack["ray_port"]), *map(str, sorted(ports))]
    probe = as_nobody(*python, "-c", RAY_PROBE, *arguments)
    assert probe.returncode == 0, probe.stderr[-3000:]
    answers = json.loads(probe.stdout.strip().splitlines()[-1])
    let_in = []  # every way in, listed together
    if client_port and not answers["client"].startswith("refused"):
        let_in.append(f"ray://127.0.0.1:{client_port}: {answers['client']}")
    if not (answers["gcs"].startswith("refused") and "auth" in answers["gcs"].lower()):
        let_in.append(f"the GCS, 127.0.0.1:{stack['ray_port']}: {answers['gcs']}")
    for port, answer in answers["ports"].items():
        if answer == "closed":  # an idle worker that exited meanwhile
            continue
        codes = set(answer.values())
        if "OK" in codes or not ("UNAUTHENTICATED" in codes or answer.get("http") in (401, 403)):
            let_in.append(f"port {port}, {ports[int(port)]}, answers without the token: {answer}")
    assert not let_in, "\n".join(let_in)
    # what the head runs and where: no Ray Client server, every port on loopback only
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in head if Path(f"/proc/{pid}").exists()]
    assert not [c for c in commands if b"ray.util.client.server" in c], "the head runs a Ray Client server"
    assert stack["ray_port"] in ports and all(where.endswith("on 127.0.0.1)") for where in ports.values()), ports
    # Ray's session folders (logs, the raylet's socket) in a folder no other user can enter
    from team.stack import ray_sessions_parent

    sessions = ray_sessions_parent(stack_dir)
    assert sessions.stat().st_mode & 0o777 == 0o700 and as_nobody("ls", str(sessions)).returncode != 0
    assert [c for c in commands if f"--raylet_socket_name={sessions}/".encode() in c], (
        "the raylet's socket is elsewhere"
    )

    # the token: a file only the owner reads, named (not held) by the client settings
    token = stack_dir / "ray_token"
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text().strip()) >= 32
    assert as_nobody("cat", str(token)).returncode != 0
    # the owner without the token is refused too: the token, not the user, opens the head
    tokenless = {key: value for key, value in env.items() if not key.startswith("RAY_AUTH")} | {"HOME": str(stack_dir)}
    probe = subprocess.run(
        ["python", "-c", RAY_PROBE, "0", str(stack["ray_port"])], cwd=lab, env=tokenless, capture_output=True, text=True
    )
    assert json.loads(probe.stdout.strip().splitlines()[-1])["gcs"].startswith("refused"), probe.stderr[-2000:]


def test_up_prints_no_secret_and_keeps_the_client_settings_in_a_private_file(team_lab):
    lab, stack_dir, env = team_lab
    printed = (stack_dir.parent / "up.out").read_text()
    secrets_ = dict(line.split("=", 1) for line in (stack_dir / "credentials.env").read_text().split())
    hidden = [value for key, value in secrets_.items() if key != "MLFLOW_TRACKING_USERNAME"]
    assert not [value for value in hidden if value in printed], printed
    token = (stack_dir / "ray_token").read_text().strip()
    assert token not in printed
    client_env = stack_dir / "client.env"
    assert f". {client_env}" in printed.splitlines(), printed  # instead: the line that loads them
    assert client_env.stat().st_mode & 0o777 == 0o600
    # sourced, the file sets what `env` prints for scripts to eval: the password, the token's file
    show = 'printf "%s\\n" "$MLFLOW_TRACKING_PASSWORD" "$RAY_AUTH_TOKEN_PATH" "$RAY_ADDRESS"'
    loaded = subprocess.run(
        ["bash", "-c", f". {shlex.quote(str(client_env))} && {show}"], capture_output=True, text=True
    )
    expected = [secrets_["MLFLOW_TRACKING_PASSWORD"], str(stack_dir / "ray_token"), env["RAY_ADDRESS"]]
    assert loaded.stdout.split() == expected and env["MLFLOW_TRACKING_PASSWORD"] == expected[0], loaded.stderr
    # `env` prints the password (scripts eval it) but never the token, only its file
    assert token not in run(["python", "-m", "team.stack", "env", "--dir", str(stack_dir)], lab).stdout


def test_a_study_runs_through_ray_into_the_shared_server_and_remotes_and_is_collected(team_lab, tmp_path):
    lab, stack_dir, env = team_lab
    submit_args = ["python", "-m", "team.study", "submit", "--sweep", "study/team_test.yaml"]
    submit_args += ["--work-root", str(tmp_path / "workers"), "--retries", "3"]
    # the server refuses a client without credentials
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.value.code == 401
    # wrong credentials: one line, before anything runs
    bad = subprocess.run(
        submit_args, cwd=lab, env=env | {"MLFLOW_TRACKING_PASSWORD": "wrong"}, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "MLFLOW_TRACKING_PASSWORD" in bad.stderr.strip().splitlines()[-1]

    submission = subprocess.Popen(
        submit_args, cwd=lab, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed = kill_one_running_task(deadline_s=240)
    output, _ = submission.communicate(timeout=900)
    assert killed, output
    lines = [line for line in output.splitlines() if line.startswith("team study:")]
    # every run ends: the killed one retried by Ray, the adamw ones failed as rows
    for name in NAMES:
        expected = "failed" if "adamw" in name else "success"
        assert any(line.startswith(f"team study: {name} {expected} on ") for line in lines), output
    assert submission.returncode == 1  # failed runs make the submission fail, after all ran
    assert any("2 failed" in line for line in lines), output

    # each successful run is a FINISHED MLflow run in the PostgreSQL-backed server, with its per-epoch
    # metrics and its checkpoints stored through the server's artifact proxy
    from mlflow.tracking import MlflowClient

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ[key] = env[key]
    try:
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("spikelab-test")
        runs = {
            r.info.run_name: r for r in client.search_runs([experiment.experiment_id]) if r.info.status == "FINISHED"
        }
        for name in (n for n in NAMES if "adamw" not in n):
            assert name in runs, sorted(runs)
            info = runs[name].info
            assert info.artifact_uri.startswith("mlflow-artifacts:")
            assert [m.step for m in client.get_metric_history(info.run_id, mlflow_key("loss"))] == [1, 2, 3]
            paths = {a.path for a in client.list_artifacts(info.run_id, "checkpoints")}
            assert {"checkpoints/best.keras", "checkpoints/last.keras"} <= paths
            stored = stack_dir / "artifacts" / experiment.experiment_id / info.run_id / "artifacts"
            assert (stored / "checkpoints" / "best.keras").stat().st_size > 0
    finally:
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
    # ... and the store really is PostgreSQL: the runs table there holds them
    stack = json.loads((stack_dir / "stack.json").read_text())
    count = subprocess.run(
        ["runuser", "-u", "postgres", "--"] * (os.geteuid() == 0)
        + ["psql", "-h", stack["postgres_data"], "-p", str(stack["postgres_port"]), "-U", "postgres", "-d", "mlflow"]
        + ["-tAc", "SELECT count(*) FROM runs WHERE status = 'FINISHED' AND name LIKE 'teamtest-%'"],
        capture_output=True,
        text=True,
    )
    assert int(count.stdout.strip()) >= 4, count.stderr

    # a re-submission runs nothing that is on the remote: no doubled rows
    again = subprocess.run(submit_args, cwd=lab, env=env, capture_output=True, text=True)
    assert "teamtest-baseline-s0 is already on the git remote" in again.stdout
    assert " success on " not in again.stdout

    # a third clone collects: the experiments and their outputs, and the report with the failures as rows
    collector = tmp_path / "collector"
    run(["git", "clone", "-q", str(lab), str(collector)], tmp_path)
    run(["git", "remote", "add", "team", stack["git_remote"]], collector)
    run(["dvc", "remote", "add", "--local", "team", stack["dvc_remote"]], collector)
    run(["python", "-m", "team.study", "collect", "--sweep", "study/team_test.yaml"], collector)
    rows = (collector / "study" / "results" / "teamtest_runs.csv").read_text().splitlines()
    states = {row.split(",")[0]: row.split(",")[3] for row in rows[1:]}
    assert len(rows) == 1 + len(NAMES)  # every row, each once
    assert states == {name: "failed" if "adamw" in name else "success" for name in NAMES}, rows
    shown = run(["dvc", "exp", "show", "--json"], collector).stdout
    assert all(name in shown for name in NAMES if "adamw" not in name)
    # the checkpoint another machine made, from the DVC remote: what a replay starts from
    run(["dvc", "exp", "apply", "teamtest-baseline-s1"], collector)
    assert (collector / "models" / "best.keras").stat().st_size > 0


POPULATION_SWEEP = """\
prefix: teampop
seeds: [0, 1]
cells:
  baseline: {train.epochs: 30}
  eps-1e-2: {train.epochs: 30, optimizer.epsilon: 1.0e-2}
"""


def kill_population_task_after(snapshot: str, clone_glob: str, workers: Path, deadline_s: float) -> bool:
    """SIGKILL the Ray worker running the population in the clone matching clone_glob, once one of its
    members has written `snapshot` (the worker is the `ray::run_population` above its training)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        clones = [
            path.parents[6] for path in workers.glob(f"{clone_glob}/study/populations/*/*/models/snapshots/{snapshot}")
        ]
        for pid in (entry for entry in os.listdir("/proc") if entry.isdigit()) if clones else ():
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
                here = Path(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
            if b"study.population" not in title or here != clones[0]:
                continue
            parent = int(pid)
            while parent > 1:  # up to the Ray worker that runs the task
                try:
                    stat = Path(f"/proc/{parent}/stat").read_text()
                    parent = int(stat.rsplit(")", 1)[1].split()[1])
                    if Path(f"/proc/{parent}/cmdline").read_bytes().startswith(b"ray::run_population"):
                        os.kill(parent, signal.SIGKILL)
                        return True
                except OSError:
                    break
        time.sleep(0.2)
    return False


# before the outage test, which kills the tracking server. Opt-in until an open flake is found: of
# four runs on a loaded machine, one ended with both populations exiting 1 at the same second
# (their error hidden by the progress line then; the line now shows it): docs/team.md
@pytest.mark.skipif(
    not os.environ.get("SPIKELAB_TEAM_POPULATIONS"),
    reason="opt-in (SPIKELAB_TEAM_POPULATIONS=1): an unexplained failure in one of four runs is open",
)
def test_populations_run_as_ray_tasks_resume_after_a_killed_worker_and_are_collected(team_lab, tmp_path):
    lab, stack_dir, env = team_lab
    (lab / "study" / "team_pop.yaml").write_text(POPULATION_SWEEP)
    run(["git", "add", "study/team_pop.yaml"], lab)
    run(["git", "commit", "-qm", "the team population test's study"], lab)
    workers = tmp_path / "workers"
    args = ["python", "-m", "team.study", "submit", "--sweep", "study/team_pop.yaml", "--engine", "population"]
    args += ["--cpus", "1", "--work-root", str(workers), "--retries", "3"]
    submission = subprocess.Popen(args, cwd=lab, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = kill_population_task_after("resume_00004.npz", "*-teampop-baseline-p0", workers, deadline_s=300)
    output, _ = submission.communicate(timeout=900)
    assert killed, output
    assert submission.returncode == 0, output
    for population in ("teampop-baseline-p0", "teampop-eps-1e-2-p0"):
        assert f"team study: population {population} (2 runs) success on " in output, output

    # the killed population resumed in its clone: each member has one MLflow run, FINISHED, every epoch once
    from mlflow.tracking import MlflowClient

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ[key] = env[key]
    try:
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("spikelab-test")
        runs = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name.startswith("teampop-")]
        members = [r for r in runs if r.info.run_name.rsplit("-", 1)[-1].startswith("s")]  # not the -p0 parents
        names = sorted(r.info.run_name for r in members)
        assert names == sorted(f"teampop-{cell}-s{seed}" for cell in ("baseline", "eps-1e-2") for seed in (0, 1))
        for member in members:
            assert member.info.status == "FINISHED"
            steps = [m.step for m in client.get_metric_history(member.info.run_id, mlflow_key("loss"))]
            assert sorted(steps) == list(range(1, 31)), member.info.run_name
    finally:
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)

    # a re-submission runs nothing; a third clone collects the rows
    again = subprocess.run(args, cwd=lab, env=env, capture_output=True, text=True)
    assert "population teampop-baseline-p0 is already on the git remote, not run again" in again.stdout, again.stdout
    stack = json.loads((stack_dir / "stack.json").read_text())
    collector = tmp_path / "collector"
    run(["git", "clone", "-q", str(lab), str(collector)], tmp_path)
    run(["git", "remote", "add", "team", stack["git_remote"]], collector)
    collect = ["python", "-m", "team.study", "collect", "--sweep", "study/team_pop.yaml", "--engine", "population"]
    run(collect, collector)
    import csv

    with open(collector / "study" / "results" / "teampop_runs.csv", newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 4 and {row["state"] for row in rows.values()} == {"success"}
    assert {row["engine"] for row in rows.values()} == {"population"}
    assert all(row["rev"] for row in rows.values())  # the code revision the workers trained


def test_the_server_stopped_mid_run_loses_no_files_and_says_so(team_lab, tmp_path):
    lab, stack_dir, env = team_lab
    stack = json.loads((stack_dir / "stack.json").read_text())
    args = ["python", "-m", "team.study", "submit", "--sweep", "study/team_outage.yaml"]
    submission = subprocess.Popen(
        [*args, "--work-root", str(tmp_path / "workers")],
        cwd=lab,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    # mid-training: the tiny config snapshots every epoch, so a few snapshots mean epochs are running
    while len(list((tmp_path / "workers").glob("*/models/snapshots/epoch_*.npz"))) < 5:
        assert time.monotonic() < deadline and submission.poll() is None, "the training never got going"
        time.sleep(0.2)
    os.killpg(stack["mlflow_pid"], signal.SIGKILL)  # the tracking server dies mid-training
    output, _ = submission.communicate(timeout=600)  # no hang: the train stage degrades, evaluate refuses
    row = next(line for line in output.splitlines() if line.startswith("team study: teamoutage-long-s0 "))
    assert " failed on " in row and "unreachable" in row, output  # evaluate refuses in one line
    kept = Path(row.rsplit("(files kept in ", 1)[1].rstrip(")"))
    # the training finished and wrote its files; the row names where they are
    train = json.loads((kept / "metrics" / "train.json").read_text())
    assert train["epochs_run"] == 400
    assert (kept / "models" / "best.keras").stat().st_size > 0


def start_other_ray_cluster() -> tuple[subprocess.Popen, Path]:
    """Someone else's Ray head on this host (own ports, own temp dir), which `down` must leave alone."""
    import tempfile

    from team.stack import free_port

    temp = Path(tempfile.mkdtemp(prefix="ray-other-", dir="/tmp"))  # short: Ray's socket paths are limited
    command = [str(Path(os.sys.executable).parent / "ray"), "start", "--head", "--block", "--disable-usage-stats"]
    command += ["--port", str(free_port()), "--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
    command += ["--include-dashboard", "false", "--temp-dir", str(temp)]
    command += ["--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())]
    log = temp / "start.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"),
        )
    deadline = time.monotonic() + 120
    while b"Ray runtime started." not in log.read_bytes():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    return process, temp


def test_the_stack_comes_down_leaving_no_process_behind_and_other_ray_clusters_running(team_lab):
    """Only the stack's own processes are checked (its recorded pids and their descendants): a
    developer's `mlflow ui` or another Ray cluster on the machine is none of this test's business."""
    from team.stack import descendants

    lab, stack_dir, _ = team_lab
    stack = json.loads((stack_dir / "stack.json").read_text())
    other, other_temp = start_other_ray_cluster()
    other_processes = descendants(other.pid)
    # an unrelated `mlflow ui` a developer left open: must neither fail the test nor be stopped
    bystander = subprocess.Popen(["bash", "-c", "exec -a 'uvicorn mlflow.server:app --port 5000' sleep 300"])
    try:
        # the server's own helpers (uvicorn, its job runner and huey consumers) are in its process
        # group; the Ray head's daemons are its children
        ours = (
            {stack["mlflow_pid"], stack["ray_pid"]} | descendants(stack["mlflow_pid"]) | descendants(stack["ray_pid"])
        )
        assert len(ours) > 4
        run(["python", "-m", "team.stack", "down", "--dir", str(stack_dir), "--purge"], lab)
        time.sleep(2)
        left = [pid for pid in ours if Path(f"/proc/{pid}").exists()]
        assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
        pattern = stack["postgres_data"]
        assert subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True).returncode == 1
        assert not Path(stack["postgres_data"]).exists() and not stack_dir.exists()
        # another cluster on the host is not the stack's to stop
        assert other.poll() is None and all(Path(f"/proc/{pid}").exists() for pid in other_processes)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        other.terminate()
        other.wait(timeout=60)
        shutil.rmtree(other_temp, ignore_errors=True)
