"""``lopt launch`` and the cluster files in ``infra/clusters``.

The fast tests validate every cluster file with Ray's own cluster-launcher
validation (``prepare_config`` + ``validate_config``, the JSON schema shipped
in ``ray.autoscaler``) or against the fields the KubeRay ``ray.io/v1`` CRDs
require (``cluster_files.kuberay_problems``), and check that each keeps the
dashboard on 127.0.0.1 and Ray's token authentication on.

The slow test makes a real two-node Ray cluster on this machine (a head and
a worker, ``ray start --block`` subprocesses in their own sessions, token
auth on, a private temp dir and free ports), submits a train job and then an
evaluate job through ``lopt launch``, and follows them to SUCCEEDED.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import requests
import yaml

from infra import cli, cluster_files, launch

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "infra" / "clusters"
LAUNCHER_FILES = sorted(CLUSTERS.glob("*.yaml"))
KUBERAY_FILES = sorted((CLUSTERS / "kuberay").glob("*.yaml"))


def _lopt(*args, env=None, timeout=120):
  return subprocess.run([sys.executable, "-m", "infra.cli", *args],
                        capture_output=True, text=True, cwd=ROOT, env=env,
                        timeout=timeout)


def _one_line_error(out, needle):
  assert out.returncode == 2, (out.stdout, out.stderr)
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("lopt: error: "), out.stderr
  assert needle in lines[0], lines[0]
  return lines[0]


def _cli_error(capsys, needle, *args):
  """``lopt ARGS`` in this process: exit code 2 and one line naming it."""
  assert cli.main([str(a) for a in args]) == 2, args
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("lopt: error: "), lines
  assert needle in lines[0], lines[0]
  return lines[0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ---------------------------------------------------------------- files


def test_the_expected_cluster_files_exist():
  names = {p.name for p in LAUNCHER_FILES}
  assert {"gcp-tpu.yaml", "gcp-gpu.yaml", "local.yaml"} <= names
  kube = {p.name for p in KUBERAY_FILES}
  assert {"raycluster-tpu.yaml", "raycluster-gpu.yaml", "rayjob-tpu.yaml",
          "rayjob-gpu.yaml"} <= kube


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_files_pass_rays_validation_and_stay_private(path):
  from ray.autoscaler._private.util import prepare_config, validate_config
  config = yaml.safe_load(path.read_text())
  validate_config(prepare_config(config))  # raises on any schema problem
  assert cluster_files.launcher_problems(config) == []
  assert cluster_files.security_problems([config]) == []
  heads = " ".join(config["head_start_ray_commands"])
  assert "--dashboard-host=127.0.0.1" in heads
  for cmd in config["head_start_ray_commands"] + config[
      "worker_start_ray_commands"]:
    if "ray start" in cmd:
      assert "RAY_AUTH_MODE=token" in cmd
  assert "disabled" not in json.dumps(config)
  assert "~/.ray/auth_token" in config["file_mounts"]
  setup = " ".join(config["setup_commands"] + config["head_setup_commands"] +
                   config["worker_setup_commands"])
  assert "pip install" in setup and "lopt" in setup
  cluster = cluster_files.load(str(path))
  assert cluster.dashboard_port == 8265 and cluster.kind == "launcher"


def test_accelerator_node_types():
  tpu = yaml.safe_load((CLUSTERS / "gcp-tpu.yaml").read_text())
  types = {nt["node_config"].get("acceleratorType"): nt["resources"]
           for nt in tpu["available_node_types"].values()}
  assert types["v4-8"] == {"TPU": 4} and types["v5litepod-4"] == {"TPU": 4}
  assert "lopt[tpu]" in " ".join(tpu["worker_setup_commands"])
  gpu = yaml.safe_load((CLUSTERS / "gcp-gpu.yaml").read_text())
  machines = {nt["node_config"]["machineType"]: nt["resources"]
              for nt in gpu["available_node_types"].values()}
  assert machines["a2-highgpu-1g"]["GPU"] == 1
  assert machines["a3-highgpu-8g"]["GPU"] == 8
  assert "lopt[gpu]" in " ".join(gpu["worker_setup_commands"])
  local = yaml.safe_load((CLUSTERS / "local.yaml").read_text())
  assert local["provider"] == {"type": "local", "head_ip": "127.0.0.1",
                               "worker_ips": []}


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_manifests_have_the_crd_fields_and_stay_private(path):
  docs = list(yaml.safe_load_all(path.read_text()))
  for doc in docs:
    assert cluster_files.kuberay_problems(doc) == [], doc.get("kind")
  assert cluster_files.security_problems(docs) == []
  for doc in docs:
    if doc["kind"] not in ("RayCluster", "RayJob"):
      continue
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"][
        "rayClusterSpec"]
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == \
        "127.0.0.1"
    limits = [c["resources"]["limits"] for g in spec["workerGroupSpecs"]
              for c in g["template"]["spec"]["containers"]]
    if "tpu" in path.name:
      assert all(lim["google.com/tpu"] == "4" for lim in limits)
    else:
      assert all(int(lim["nvidia.com/gpu"]) >= 1 for lim in limits)
    if doc["kind"] == "RayJob":
      assert doc["spec"]["submissionMode"] == "SidecarMode"
      assert spec["authOptions"] == {"mode": "token"}
      assert "infra.cli train" in doc["spec"]["entrypoint"]
  assert "disabled" not in json.dumps(docs)


def test_the_crd_checks_catch_missing_fields():
  rc = yaml.safe_load((CLUSTERS / "kuberay" / "raycluster-tpu.yaml")
                      .read_text())
  bad = json.loads(json.dumps(rc))
  del bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
      "image"]
  bad["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 0
  bad["spec"]["workerGroupSpecs"][1]["rayStartParams"] = {"num-cpus": 4}
  del bad["spec"]["workerGroupSpecs"][1]["template"]["spec"]["nodeSelector"]
  problems = " | ".join(cluster_files.kuberay_problems(bad))
  for needle in ("needs a name and an image", "minReplicas <= replicas",
                 "strings to strings", "gke-tpu-accelerator"):
    assert needle in problems
  job = {"apiVersion": "ray.io/v1", "kind": "RayJob",
         "metadata": {"name": "x"}, "spec": {"submissionMode": "Nope"}}
  problems = " | ".join(cluster_files.kuberay_problems(job))
  assert "entrypoint" in problems and "submissionMode" in problems


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c["head_start_ray_commands"].__setitem__(
        1, c["head_start_ray_commands"][1].replace("127.0.0.1", "0.0.0.0")),
     "--dashboard-host=127.0.0.1"),
    (lambda c: c["worker_start_ray_commands"].__setitem__(
        1, c["worker_start_ray_commands"][1].replace(
            "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled")),
     "RAY_AUTH_MODE=token"),
    (lambda c: c.__setitem__("bogus_key", 1), "bogus_key"),
])
def test_launch_refuses_exposed_or_invalid_cluster_files(edit, needle,
                                                         tmp_path, capsys):
  config = yaml.safe_load((CLUSTERS / "gcp-tpu.yaml").read_text())
  edit(config)
  path = tmp_path / "c.yaml"
  path.write_text(yaml.safe_dump(config))
  _cli_error(capsys, needle, "launch", "--cluster", path, "train",
             "--workdir", "/w")


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
  port = _free_port()
  line = _cli_error(capsys, f"cannot reach the Ray Jobs API at "
                    f"http://127.0.0.1:{port}", "launch", "--cluster",
                    CLUSTERS / "gcp-tpu.yaml", "--address",
                    f"http://127.0.0.1:{port}", "list")
  assert "ray up" in line and "ray dashboard" in line
  line = _cli_error(capsys, "cannot reach", "launch", "--cluster",
                    CLUSTERS / "kuberay" / "raycluster-gpu.yaml", "--address",
                    f"127.0.0.1:{port}", "status", "x")
  assert "kubectl port-forward svc/lopt-gpu-head-svc 8265:8265" in line
  _cli_error(capsys, "does not exist", "launch", "--cluster",
             tmp_path / "no.yaml", "train")
  _cli_error(capsys, "needs --cluster FILE", "launch", "train", "--workdir",
             "/w")
  _cli_error(capsys, "bogus", "launch", "--cluster", CLUSTERS / "local.yaml",
             "train", "--set", "bogus=1")
  _cli_error(capsys, "no RayCluster", "launch", "--cluster",
             CLUSTERS / "kuberay" / "rayjob-tpu.yaml", "list")
  _cli_error(capsys, "launch logs: ", "launch", "--cluster",
             CLUSTERS / "local.yaml", "logs")  # no job id
  # And as a real process: the exit code and the one line on stderr.
  _one_line_error(_lopt("launch", "train", "--workdir", "/w"),
                  "needs --cluster FILE")


def test_job_arguments_ship_local_files_and_join_the_cluster(tmp_path):
  from metatrain.training import config as config_lib
  cfg = tmp_path / "mine.json"
  cfg.write_text(json.dumps(config_lib.to_dict(config_lib.load("tiny"))))
  staging = tmp_path / "stage"
  staging.mkdir()
  argv = launch.job_arguments(
      "train", ["--workdir", "/w", f"--config={cfg}", "--set", "steps=3"],
      str(staging))
  assert argv == ["train", "--workdir", "/w", "--config", "job_config.json",
                  "--set", "steps=3", "--address", "auto"]
  assert (staging / "job_config.json").read_text() == cfg.read_text()
  argv = launch.job_arguments("train", ["--workdir", "/w", "--address",
                                        "ray://x:1"], str(staging))
  assert argv.count("--address") == 1


def test_auth_headers_read_the_token_like_ray(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
  monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
  assert launch.auth_headers() == {}
  (tmp_path / ".ray").mkdir()
  (tmp_path / ".ray" / "auth_token").write_text("home\n")
  assert launch.auth_headers() == {"Authorization": "Bearer home"}
  (tmp_path / "t").write_text("file")
  monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
  assert launch.auth_headers() == {"Authorization": "Bearer file"}
  monkeypatch.setenv("RAY_AUTH_TOKEN", "env")
  assert launch.auth_headers() == {"Authorization": "Bearer env"}
  monkeypatch.delenv("RAY_AUTH_TOKEN")
  monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
  with pytest.raises(launch.LaunchError, match="RAY_AUTH_TOKEN_PATH"):
    launch.auth_headers()


# ------------------------------------------------------- a real cluster


class _LocalCluster:
  """A head and ``workers`` worker nodes on 127.0.0.1, ended by process
  group."""

  def __init__(self, workers: int = 1):
    self.workers = workers
    # Unix socket paths must stay under ~107 characters: a short temp dir.
    self.tmp = tempfile.mkdtemp(prefix="lr", dir="/tmp")
    self.token_file = os.path.join(self.tmp, "token")
    with open(self.token_file, "w") as f:
      f.write(secrets.token_hex(24))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    bindir = os.path.dirname(sys.executable)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=self.token_file,
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               PATH=bindir + os.pathsep + env.get("PATH", ""))
    self.env = env
    self.ray = shutil.which("ray", path=env["PATH"])
    self.gcs_port, self.dash_port = _free_port(), _free_port()
    self.url = f"http://127.0.0.1:{self.dash_port}"
    self.procs: list[subprocess.Popen] = []
    # Worker ports away from Ray's default range (10002-19999), which other
    # Ray instances on this machine use, and from the ephemeral ports.
    self.worker_ports = iter(range(random.randrange(20000, 29000, 100),
                                   30000, 300))

  def _start(self, name: str, *args: str) -> None:
    log = open(os.path.join(self.tmp, f"{name}.log"), "w")
    self.procs.append(subprocess.Popen(
        [self.ray, "start", "--block", "--node-ip-address=127.0.0.1",
         f"--dashboard-agent-listen-port={_free_port()}",
         f"--metrics-export-port={_free_port()}",
         f"--min-worker-port={(lo := next(self.worker_ports))}",
         f"--max-worker-port={lo + 199}", *args],
        stdout=log, stderr=subprocess.STDOUT, env=self.env,
        start_new_session=True))

  def headers(self) -> dict[str, str]:
    with open(self.token_file) as f:
      return {"Authorization": f"Bearer {f.read().strip()}"}

  def nodes(self) -> list[dict]:
    try:
      r = requests.get(f"{self.url}/api/v0/nodes", headers=self.headers(),
                       timeout=5)
      r.raise_for_status()
      return [n for n in r.json()["data"]["result"]["result"]
              if n["state"] == "ALIVE"]
    except (requests.RequestException, KeyError, ValueError):
      return []

  def start(self, timeout: float = 120) -> None:
    self._start("head", "--head", f"--port={self.gcs_port}",
                f"--dashboard-port={self.dash_port}",
                "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                f"--ray-client-server-port={_free_port()}",
                f"--temp-dir={self.tmp}", "--num-cpus=0")
    self._wait(lambda: len(self.nodes()) == 1, timeout, "the head")
    # One at a time: nodes starting together on one host race for the same
    # socket names in the session dir.
    for i in range(self.workers):
      self._start(f"worker{i}", f"--address=127.0.0.1:{self.gcs_port}",
                  "--num-cpus=1", '--resources={"lopt_worker": 1}')
      self._wait(lambda n=i + 2: len(self.nodes()) == n, timeout,
                 f"worker node {i}")

  def _wait(self, pred, timeout, what) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
      if pred():
        return
      if any(p.poll() is not None for p in self.procs):
        break
      time.sleep(1)
    logs = {os.path.basename(p): open(p).read()[-2000:]
            for p in glob.glob(os.path.join(self.tmp, "*.log"))}
    raise AssertionError(f"{what} did not come up: {logs}")

  def stop(self) -> None:
    """SIGTERMs each node's process group, SIGKILLs what is left after 2 s.

    A graceful node shutdown takes ~30 s here, for nothing a test needs.
    """
    for p in self.procs:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    deadline = time.time() + 2
    for p in self.procs:
      try:
        p.wait(timeout=max(0.1, deadline - time.time()))
      except subprocess.TimeoutExpired:
        pass
      with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
      p.wait()
    self._end_strays()
    shutil.rmtree(self.tmp, ignore_errors=True)

  def _end_strays(self) -> None:
    """Kills processes of this cluster that left the node's process group.

    Ray workers and job drivers run in sessions of their own; they are
    recognised by this cluster's private token path in their environment.
    """
    mark = f"RAY_AUTH_TOKEN_PATH={self.token_file}".encode()
    for _ in range(20):
      strays = []
      for d in glob.glob("/proc/[0-9]*"):
        try:
          with open(f"{d}/environ", "rb") as f:
            if mark in f.read().split(b"\0"):
              strays.append(int(os.path.basename(d)))
        except OSError:
          continue
      strays = [pid for pid in strays if pid != os.getpid()]
      if not strays:
        return
      for pid in strays:
        with contextlib.suppress(ProcessLookupError):
          os.kill(pid, signal.SIGKILL)
      time.sleep(0.5)


@pytest.fixture
def ray_cluster():
  cluster = _LocalCluster()
  try:
    cluster.start()
    yield cluster
  finally:
    cluster.stop()


def _wait_job(client, job_id: str, timeout: float) -> str:
  t0 = time.time()
  while time.time() - t0 < timeout:
    status = str(client.get_job_status(job_id))
    if status in launch.TERMINAL:
      return status
    time.sleep(2)
  return "TIMEOUT"


@pytest.mark.slow
def test_train_and_evaluate_jobs_on_a_two_node_cluster(ray_cluster,
                                                         tmp_path):
  from ray.job_submission import JobSubmissionClient
  c = ray_cluster
  env = dict(c.env)
  local = str(CLUSTERS / "local.yaml")
  base = ["launch", "--cluster", local, "--address", c.url]
  on_worker = ["--entrypoint-resources", '{"lopt_worker": 1}']
  wd = str(tmp_path / "run")
  out = _lopt(*base, *on_worker, "train", "--workdir", wd, "--config",
              "tiny", "--steps", "2", "--set", 'tasks.families=["quadratic"]',
              "--set", "tasks.num_groups=1", "--set", "unroll.min_steps=5",
              "--set", "unroll.max_steps=5", "--set", "learner.save_every=1",
              "--address", "auto", env=env)
  assert out.returncode == 0, out.stderr
  train_id = launch.job_id_pattern().search(out.stdout).group(0)
  assert f"lopt launch --address {c.url} logs {train_id} --follow" in \
      out.stdout
  client = JobSubmissionClient(c.url, headers=c.headers())
  status = _wait_job(client, train_id, 240)
  assert status == "SUCCEEDED", client.get_job_logs(train_id)

  out = _lopt(*base, *on_worker, "evaluate", "--workdir", wd, "--once",
              "--set", 'tasks=["digits_mlp"]', "--set", "steps=10", "--set",
              "seeds=1", "--set", 'baselines=["adam"]', "--set",
              "adam_lrs=[0.01]", "--set", "learned_lrs=[0.01]", "--set",
              "eval_every=0", env=env)
  assert out.returncode == 0, out.stderr
  eval_id = launch.job_id_pattern().search(out.stdout).group(0)
  # Follow it to the end through the CLI: the exit code is the job's.
  out = _lopt(*base, "logs", eval_id, "--follow", env=env, timeout=300)
  assert out.returncode == 0, (out.stdout, out.stderr)
  assert f"job {eval_id}: SUCCEEDED" in out.stderr

  heads = [n["node_id"] for n in c.nodes() if n["is_head_node"]]
  for job_id in (train_id, eval_id):
    info = client.get_job_info(job_id)
    assert info.driver_node_id and info.driver_node_id not in heads
    out = _lopt(*base, "status", job_id, env=env)
    assert out.returncode == 0 and f"{job_id}: SUCCEEDED" in out.stdout
  logs = _lopt(*base, "logs", train_id, env=env).stdout
  assert "done at step 2" in logs, logs
  listed = _lopt(*base, "list", env=env).stdout
  assert train_id in listed and eval_id in listed

  records = [json.loads(line) for line in
             open(os.path.join(wd, "eval", "records.jsonl"))]
  final = [r for r in records if r["source"] == "step:2"]
  # The job evaluated the trained checkpoint: learned at its default rate
  # and on its rate grid (the tuned comparison), and its tuned Adam.
  assert {(r["optimizer"], r["hparams"].get("learning_rate")) for r in final
          } == {("learned", None), ("learned", 0.01), ("adam", 0.01)}
  assert all(r["task"] == "digits_mlp" and r["steps_done"] == 10 and
             r["final_loss"] is not None for r in final)

  # Bad input against the live cluster: one line, exit code 2.
  _one_line_error(_lopt(*base, "status", "no-such-job", env=env),
                  "no job 'no-such-job'")
  _one_line_error(_lopt(*base, "logs", "no-such-job", env=env),
                  "lopt launch list")
  wrong = dict(env, RAY_AUTH_TOKEN="not-the-token")
  _one_line_error(_lopt(*base, "list", env=wrong), "refused the token")
