"""Cluster files for ``lopt launch``: validation, security checks, hints.

Two kinds of file are understood:

- Ray cluster-launcher YAML (``ray up FILE``; ``infra/clusters/gcp-*.yaml``,
  ``local.yaml``): validated with Ray's own ``prepare_config`` and
  ``validate_config`` (the JSON schema shipped in ``ray.autoscaler``), and
  TPU node types checked against Ray's TPU tables.
- KubeRay manifests (``infra/clusters/kuberay/*.yaml``): each document
  checked for the fields the ``ray.io/v1`` CRDs require (see
  ``kuberay_problems``).

Both must keep the dashboard on 127.0.0.1 and Ray's token authentication on
(``security_problems``); ``lopt launch`` refuses a file that does not.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re

import yaml

DEFAULT_PORT = 8265
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode")


@dataclasses.dataclass(frozen=True)
class Cluster:
  """What ``lopt launch`` needs from a cluster file."""

  path: str
  kind: str  # "launcher" (ray up) or "kuberay" (a RayCluster manifest)
  name: str
  provider: str  # the launcher's provider type, or "kuberay"
  dashboard_port: int = DEFAULT_PORT

  def start_hint(self) -> str:
    """How to start the cluster and open the tunnel to its Jobs API."""
    if self.kind == "kuberay":
      p = self.dashboard_port
      return (f"create the cluster (`kubectl apply -f {self.path}`) and "
              f"port-forward (`kubectl port-forward svc/{self.name}-head-svc "
              f"{p}:{p}`)")
    if self.provider == "local":
      return f"start the cluster (`ray up {self.path}`)"
    return (f"start the cluster (`ray up {self.path}`) and open the tunnel "
            f"(`ray dashboard {self.path}`)")

  def describe(self) -> str:
    return f"{self.kind} cluster {self.name!r} from {self.path}"


def _read(path: str) -> list:
  try:
    with open(path) as f:
      docs = [d for d in yaml.safe_load_all(f) if d is not None]
  except FileNotFoundError:
    raise ValueError(f"cluster file {path} does not exist: pass one of "
                     "infra/clusters/*.yaml or your own") from None
  except (OSError, yaml.YAMLError) as e:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"cannot read cluster file {path}: {first}") from None
  if not docs or not all(isinstance(d, dict) for d in docs):
    raise ValueError(f"cluster file {path} is not a YAML mapping")
  return docs


def launcher_problems(config: dict) -> list[str]:
  """Problems Ray's cluster launcher would find in ``config``, and TPU ones."""
  from ray.autoscaler._private import util  # pylint: disable=import-outside-toplevel
  quiet = logging.getLogger("ray.autoscaler")
  level = quiet.level
  quiet.setLevel(logging.WARNING)
  try:
    util.validate_config(util.prepare_config(copy.deepcopy(config)))
  except Exception as e:  # pylint: disable=broad-except
    return [str(e).splitlines()[0] or type(e).__name__]
  finally:
    quiet.setLevel(level)
  problems = []
  for name, nt in config.get("available_node_types", {}).items():
    acc = nt.get("node_config", {}).get("acceleratorType")
    if acc is None:
      continue
    from ray._private.accelerators import tpu  # pylint: disable=import-outside-toplevel
    if not tpu.TPUAcceleratorManager.is_valid_tpu_accelerator_type(acc):
      problems.append(f"{name}: unknown TPU acceleratorType {acc!r}")
      continue
    chips = int(acc.split("-")[1]) // tpu.get_tpu_cores_per_chip(acc)
    if chips > tpu.get_num_tpu_visible_chips_per_host(acc):
      problems.append(f"{name}: {acc} spans several hosts")
    if nt.get("resources", {}).get("TPU") != chips:
      problems.append(f"{name}: {acc} has {chips} chips per host but "
                      f"resources say TPU={nt.get('resources', {}).get('TPU')}")
  return problems


def _is_str_map(d) -> bool:
  return isinstance(d, dict) and all(
      isinstance(k, str) and isinstance(v, str) for k, v in d.items())


def _pod_problems(where: str, template, restart_never: bool = False
                  ) -> list[str]:
  if not isinstance(template, dict) or not isinstance(
      template.get("spec"), dict):
    return [f"{where}.template.spec is missing"]
  spec = template["spec"]
  containers = spec.get("containers")
  if not isinstance(containers, list) or not containers:
    return [f"{where}.template.spec.containers is empty"]
  problems = []
  for i, c in enumerate(containers):
    if not isinstance(c, dict) or not c.get("name") or not c.get("image"):
      problems.append(f"{where} container {i} needs a name and an image")
      continue
    res = c.get("resources", {})
    limits, requests = res.get("limits", {}), res.get("requests", {})
    sel = spec.get("nodeSelector", {})
    if "google.com/tpu" in limits:
      if requests.get("google.com/tpu", limits["google.com/tpu"]) != limits[
          "google.com/tpu"]:
        problems.append(f"{where}: google.com/tpu requests != limits")
      for key in ("cloud.google.com/gke-tpu-accelerator",
                  "cloud.google.com/gke-tpu-topology"):
        if key not in sel:
          problems.append(f"{where}: a TPU pod needs nodeSelector {key}")
    if "nvidia.com/gpu" in limits and (
        "cloud.google.com/gke-accelerator" not in sel):
      problems.append(f"{where}: a GPU pod needs nodeSelector "
                      "cloud.google.com/gke-accelerator")
  if restart_never and spec.get("restartPolicy") != "Never":
    problems.append(f"{where}: SidecarMode needs restartPolicy Never")
  return problems


def _cluster_spec_problems(where: str, spec, sidecar: bool = False
                           ) -> list[str]:
  if not isinstance(spec, dict):
    return [f"{where} is missing"]
  head = spec.get("headGroupSpec")
  if not isinstance(head, dict):
    return [f"{where}.headGroupSpec is missing"]
  problems = []
  if not _is_str_map(head.get("rayStartParams")):
    problems.append(f"{where}.headGroupSpec.rayStartParams must map strings "
                    "to strings")
  problems += _pod_problems(f"{where}.headGroupSpec", head.get("template"),
                            restart_never=sidecar)
  groups = spec.get("workerGroupSpecs", [])
  if not isinstance(groups, list):
    return problems + [f"{where}.workerGroupSpecs must be a list"]
  names = set()
  for i, g in enumerate(groups):
    w = f"{where}.workerGroupSpecs[{i}]"
    if not isinstance(g, dict) or not g.get("groupName"):
      problems.append(f"{w} needs a groupName")
      continue
    if g["groupName"] in names:
      problems.append(f"{w}: groupName {g['groupName']!r} repeats")
    names.add(g["groupName"])
    counts = [g.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
    if not all(isinstance(n, int) and n >= 0 for n in counts):
      problems.append(f"{w}: replicas, minReplicas, maxReplicas must be "
                      "integers >= 0")
    elif not counts[0] <= counts[1] <= counts[2]:
      problems.append(f"{w}: needs minReplicas <= replicas <= maxReplicas")
    if "rayStartParams" in g and not _is_str_map(g["rayStartParams"]):
      problems.append(f"{w}.rayStartParams must map strings to strings")
    if not isinstance(g.get("numOfHosts", 1), int) or g.get(
        "numOfHosts", 1) < 1:
      problems.append(f"{w}.numOfHosts must be an integer >= 1")
    problems += _pod_problems(w, g.get("template"))
  return problems


def kuberay_problems(doc: dict) -> list[str]:
  """Fields the KubeRay ``ray.io/v1`` CRDs require that ``doc`` lacks.

  All kinds: ``apiVersion``, ``kind``, ``metadata.name``. RayCluster:
  ``spec.headGroupSpec`` with ``rayStartParams`` (string to string) and
  ``template.spec.containers`` (each with ``name`` and ``image``); each
  ``spec.workerGroupSpecs[]`` with a unique ``groupName``, integer
  ``minReplicas <= replicas <= maxReplicas``, string ``rayStartParams`` and a
  ``template`` like the head's. RayJob: a non-empty ``spec.entrypoint``, a
  known ``submissionMode``, and ``spec.rayClusterSpec`` checked as a
  RayCluster's spec (or a ``clusterSelector``); SidecarMode needs the head's
  ``restartPolicy: Never``. GKE: TPU pods need the
  ``cloud.google.com/gke-tpu-accelerator`` and ``-topology`` node selectors,
  GPU pods ``cloud.google.com/gke-accelerator``.
  """
  kind = doc.get("kind")
  problems = []
  if not doc.get("apiVersion") or not kind:
    problems.append("apiVersion and kind are required")
  if not isinstance(doc.get("metadata"), dict) or not re.fullmatch(
      r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", str(doc["metadata"].get("name"))):
    problems.append("metadata.name must be a DNS-1123 label")
  if kind not in ("RayCluster", "RayJob"):
    return problems
  if doc.get("apiVersion") != "ray.io/v1":
    problems.append(f"{kind} needs apiVersion ray.io/v1")
  spec = doc.get("spec")
  if kind == "RayCluster":
    return problems + _cluster_spec_problems("spec", spec)
  if not isinstance(spec, dict):
    return problems + ["spec is missing"]
  if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"]:
    problems.append("spec.entrypoint is required")
  mode = spec.get("submissionMode", "K8sJobMode")
  if mode not in SUBMISSION_MODES:
    problems.append(f"spec.submissionMode {mode!r} is not one of "
                    f"{', '.join(SUBMISSION_MODES)}")
  if "clusterSelector" not in spec:
    problems += _cluster_spec_problems("spec.rayClusterSpec",
                                       spec.get("rayClusterSpec"),
                                       sidecar=mode == "SidecarMode")
  return problems


def _ray_containers(spec: dict) -> list[dict]:
  pods = [spec["headGroupSpec"]] + list(spec.get("workerGroupSpecs", []))
  return [p["template"]["spec"]["containers"][0] for p in pods]


def _kuberay_security(spec: dict) -> list[str]:
  problems = []
  head = spec.get("headGroupSpec", {}).get("rayStartParams", {})
  if head.get("dashboard-host") != "127.0.0.1":
    problems.append("headGroupSpec.rayStartParams dashboard-host must be "
                    "127.0.0.1 (reach it with kubectl port-forward)")
  mode = spec.get("authOptions", {}).get("mode")
  envs = [{e.get("name"): e for e in c.get("env", [])}
          for c in _ray_containers(spec)]
  for env in envs:
    if env.get("RAY_AUTH_MODE", {}).get("value", "token") != "token":
      problems.append("a container sets RAY_AUTH_MODE to something other "
                      "than token")
  by_env = all(env.get("RAY_AUTH_MODE", {}).get("value") == "token" and
               "RAY_AUTH_TOKEN" in env for env in envs)
  if mode == "disabled" or (mode != "token" and not by_env):
    problems.append("token authentication is off: set authOptions.mode "
                    "token, or RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in "
                    "every Ray container")
  return problems


def _launcher_security(config: dict) -> list[str]:
  problems = []
  starts = (list(config.get("head_start_ray_commands", [])) +
            list(config.get("worker_start_ray_commands", [])))
  hosts = re.findall(r"--dashboard-host[= ](\S+)", " ".join(starts))
  if not hosts or any(h != "127.0.0.1" for h in hosts):
    problems.append("the head's `ray start` must pass "
                    "--dashboard-host=127.0.0.1 (reach it with `ray dashboard "
                    "FILE`)")
  for cmd in starts:
    at = cmd.find("ray start")
    if at >= 0 and not 0 <= cmd.find("RAY_AUTH_MODE=token") < at:
      problems.append("each `ray start` must run with RAY_AUTH_MODE=token")
  text = yaml.safe_dump(config)
  if re.search(r"RAY_AUTH_MODE=(?!token\b)", text):
    problems.append("RAY_AUTH_MODE is set to something other than token")
  if not any(str(k).endswith(".ray/auth_token")
             for k in config.get("file_mounts", {})):
    problems.append("file_mounts must copy ~/.ray/auth_token to the nodes")
  return problems


def security_problems(docs: list[dict]) -> list[str]:
  """Where a cluster file exposes the dashboard or turns token auth off."""
  problems = []
  for doc in docs:
    if "provider" in doc:
      problems += _launcher_security(doc)
    elif doc.get("kind") == "RayCluster":
      problems += _kuberay_security(doc.get("spec", {}))
    elif doc.get("kind") == "RayJob" and "rayClusterSpec" in doc.get(
        "spec", {}):
      problems += _kuberay_security(doc["spec"]["rayClusterSpec"])
  return problems


def _dashboard_port(text: str, default: int = DEFAULT_PORT) -> int:
  m = re.search(r"--dashboard-port[= ](\d+)", text)
  return int(m.group(1)) if m else default


def load(path: str) -> Cluster:
  """Reads, validates and security-checks a cluster file.

  Raises:
    ValueError: a one-line message naming the file and the problem.
  """
  docs = _read(path)
  if len(docs) == 1 and "provider" in docs[0]:
    config = docs[0]
    problems = launcher_problems(config)
    kind, name = "launcher", str(config.get("cluster_name", "default"))
    provider = str(config["provider"].get("type"))
    port = _dashboard_port(" ".join(config.get("head_start_ray_commands",
                                               [])))
  else:
    problems = [p for d in docs for p in kuberay_problems(d)]
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    if not clusters:
      kinds = ", ".join(str(d.get("kind")) for d in docs)
      raise ValueError(f"cluster file {path} has no RayCluster (found "
                       f"{kinds}): lopt launch needs a cluster-launcher YAML "
                       "or a RayCluster manifest (a RayJob is submitted by "
                       f"KubeRay: `kubectl apply -f {path}`)")
    rc = clusters[0]
    kind, name, provider = "kuberay", str(rc["metadata"]["name"]), "kuberay"
    port = int(rc["spec"]["headGroupSpec"]["rayStartParams"].get(
        "dashboard-port", DEFAULT_PORT))
  if problems:
    raise ValueError(f"invalid cluster file {path}: {problems[0]}")
  insecure = security_problems(docs)
  if insecure:
    raise ValueError(f"cluster file {path}: {insecure[0]}; lopt keeps the "
                     "dashboard on 127.0.0.1 and Ray's token auth on")
  return Cluster(path, kind, name, provider, port)
