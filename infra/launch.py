"""``lopt launch``: run ``lopt train`` / ``lopt evaluate`` as Ray jobs.

Jobs go through Ray's Jobs API (``JobSubmissionClient``) at the head's
dashboard port. Every cluster file in ``infra/clusters`` binds the dashboard
to 127.0.0.1 on the head, so the API is reached through a tunnel that ends on
this machine: ``ray dashboard FILE`` (an SSH tunnel) for the cluster launcher,
``kubectl port-forward`` for KubeRay. The address is therefore
``http://127.0.0.1:PORT`` by default, PORT being the cluster file's dashboard
port (8265); ``--address`` overrides it. The cluster file is validated and
names the commands that start the cluster and open the tunnel.

Ray's token authentication: the request carries ``Authorization: Bearer
TOKEN``, the token read as Ray reads it, from ``RAY_AUTH_TOKEN``, else the
file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. Errors are one line
(``lopt: error: ...``, exit code 2) naming the fix.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile

from infra import cluster_files
from infra.parser import RaisingParser, UsageError, build_parser

PACKAGES = ("metatrain", "evaluators", "infra")
EXCLUDES = ["__pycache__", "*.pyc", ".git", "runs/", "*.lopt"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

class LaunchError(UsageError):
  """A problem the user can fix; the message is one line."""


def main(args) -> int:
  """Runs ``lopt launch``; returns the exit code (bad input: LaunchError)."""
  return _run(args)


def _run(args) -> int:
  if args.action in ("train", "evaluate"):
    if not args.cluster:
      raise LaunchError(f"launch {args.action} needs --cluster FILE (one of "
                        "infra/clusters/*.yaml, or your own)")
    return _submit(args, _cluster(args.cluster))
  p = RaisingParser(prog=f"lopt launch {args.action}")
  if args.action != "list":
    p.add_argument("job_id", help="the id `lopt launch train|evaluate` "
                   "printed (or `lopt launch list` shows)")
  if args.action == "logs":
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new output until the job ends "
                   "(Ctrl-C stops following, not the job)")
  p.add_argument("--address", default=args.address, metavar="URL",
                 help="Jobs API address (default: the cluster file's "
                 "tunnel, http://127.0.0.1:8265)")
  p.add_argument("--cluster", default=args.cluster, metavar="FILE",
                 help="cluster file whose dashboard port to use")
  try:
    sub = p.parse_args(args.rest)
  except UsageError as e:
    raise LaunchError(f"launch {args.action}: {e}") from None
  cluster = _cluster(sub.cluster) if sub.cluster else None
  client = _connect(_address(sub.address, cluster), cluster)
  if args.action == "list":
    return _list(client)
  info = _job(client, sub.job_id)
  if args.action == "status":
    _print_status(info)
    return 0
  if args.action == "stop":
    if str(info.status) in TERMINAL:
      print(f"job {sub.job_id} already ended: {info.status}")
    else:
      client.stop_job(sub.job_id)
      print(f"stopping job {sub.job_id}; `lopt launch status {sub.job_id}` "
            "shows when it has stopped")
    return 0
  return _logs(client, sub.job_id, sub.follow)


def _cluster(path: str) -> cluster_files.Cluster:
  try:
    return cluster_files.load(path)
  except ValueError as e:
    raise LaunchError(str(e)) from None


def _address(address: str | None, cluster) -> str:
  if not address:
    port = cluster.dashboard_port if cluster else cluster_files.DEFAULT_PORT
    return f"http://127.0.0.1:{port}"
  if "://" not in address:
    address = "http://" + address
  return address.rstrip("/")


def auth_headers() -> dict[str, str]:
  """The ``Authorization`` header for Ray's token authentication.

  Reads the token as Ray does: ``RAY_AUTH_TOKEN``, else the file named by
  ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. Sent whatever
  ``RAY_AUTH_MODE`` says here: it is the cluster that enforces it.
  """
  token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
  path = os.environ.get("RAY_AUTH_TOKEN_PATH")
  if not token and path:
    try:
      with open(os.path.expanduser(path)) as f:
        token = f.read().strip()
    except OSError as e:
      raise LaunchError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read "
                        f"({e.strerror}): point it at the cluster's token "
                        "file") from None
    if not token:
      raise LaunchError(f"RAY_AUTH_TOKEN_PATH={path} is empty: point it at "
                        "the cluster's token file")
  if not token:
    default = os.path.expanduser("~/.ray/auth_token")
    if os.path.isfile(default):
      with open(default) as f:
        token = f.read().strip()
  return {"Authorization": f"Bearer {token}"} if token else {}


def _connect(address: str, cluster):
  from ray.exceptions import AuthenticationError  # pylint: disable=import-outside-toplevel
  from ray.job_submission import JobSubmissionClient  # pylint: disable=import-outside-toplevel
  headers = auth_headers()
  try:
    return JobSubmissionClient(address, headers=headers)
  except ConnectionError:
    how = (cluster.start_hint() if cluster else "start the cluster and open "
           "a tunnel to its dashboard port, or pass --cluster FILE / "
           "--address URL")
    raise LaunchError(f"cannot reach the Ray Jobs API at {address}: "
                      f"{how}") from None
  except AuthenticationError as e:
    why = "refused the token" if headers else "requires a token"
    raise LaunchError(
        f"the Ray Jobs API at {address} {why} "
        f"({str(e).splitlines()[0].rstrip(':')}): put the cluster's token "
        "in ~/.ray/auth_token or name its file in RAY_AUTH_TOKEN_PATH "
        "(README: Launching cluster jobs)") from None
  except (RuntimeError, ValueError) as e:
    raise LaunchError(f"the Ray Jobs API at {address} failed: "
                      f"{str(e).splitlines()[0]}") from None


def _job(client, job_id: str):
  try:
    return client.get_job_info(job_id)
  except RuntimeError as e:
    if "404" in str(e) or "does not exist" in str(e):
      raise LaunchError(f"no job {job_id!r} on the cluster at "
                        f"{client.get_address()}: `lopt launch list` shows "
                        "its jobs") from None
    raise LaunchError(f"job {job_id}: {str(e).splitlines()[0]}") from None


def _when(ms) -> str:
  if not ms:
    return "-"
  return datetime.datetime.fromtimestamp(ms / 1000).strftime(
      "%Y-%m-%d %H:%M:%S")


def _print_status(info) -> None:
  print(f"{info.submission_id}: {info.status}")
  print(f"  entrypoint: {info.entrypoint}")
  print(f"  started {_when(info.start_time)}, ended {_when(info.end_time)}")
  if info.message:
    print(f"  message: {info.message.strip()}")


def _list(client) -> int:
  jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
  if not jobs:
    print(f"no jobs on the cluster at {client.get_address()}")
    return 0
  print(f"{'JOB':<40} {'STATUS':<10} {'STARTED':<19}  ENTRYPOINT")
  for j in jobs:
    entry = j.entrypoint if len(j.entrypoint) <= 70 else (
        j.entrypoint[:67] + "...")
    print(f"{str(j.submission_id or j.job_id):<40} {str(j.status):<10} "
          f"{_when(j.start_time):<19}  {entry}")
  return 0


def _logs(client, job_id: str, follow: bool) -> int:
  if not follow:
    sys.stdout.write(client.get_job_logs(job_id))
    sys.stdout.flush()
    return 0

  async def tail():
    async for chunk in client.tail_job_logs(job_id):
      sys.stdout.write(chunk)
      sys.stdout.flush()

  try:
    asyncio.run(tail())
  except KeyboardInterrupt:
    print(f"\nstopped following; the job goes on (`lopt launch stop "
          f"{job_id}` ends it)", file=sys.stderr)
    return 130
  except RuntimeError as e:
    raise LaunchError(f"following job {job_id}: "
                      f"{str(e).splitlines()[0]}") from None
  status = str(client.get_job_status(job_id))
  print(f"job {job_id}: {status}", file=sys.stderr)
  return 0 if status == "SUCCEEDED" else 1


def _option(args: list[str], name: str) -> int | None:
  """Index of ``name``'s value in args (``--name V`` or ``--name=V``)."""
  for i, a in enumerate(args):
    if a == name and i + 1 < len(args):
      return i + 1
    if a.startswith(name + "="):
      args[i:i + 1] = [name, a[len(name) + 1:]]
      return i + 1
  return None


def _validate(action: str, rest: list[str]):
  """Parses the job's arguments as ``lopt ACTION`` would, here."""
  parser = build_parser(parser_class=RaisingParser)
  try:
    parsed = parser.parse_args([action, *rest])
  except UsageError as e:
    raise LaunchError(f"{action}: {e}") from None
  try:
    if action == "train":
      from metatrain.training import config as config_lib
      config_lib.load(parsed.config, parsed.set or [])
    else:
      from evaluators import suites  # pylint: disable=import-outside-toplevel
      suites.load(parsed.suite, parsed.set or [])
  except ValueError as e:
    raise LaunchError(f"{action}: {e}") from None
  return parsed


def job_arguments(action: str, rest: list[str], staging: str) -> list[str]:
  """The job's ``lopt`` arguments: local files copied into ``staging``."""
  rest = list(rest)
  parsed = _validate(action, rest)
  for name, dest in (("--config", "job_config.json"), ("--lopt", None)):
    i = _option(rest, name)
    if i is not None and os.path.isfile(rest[i]):
      dest = dest or os.path.basename(rest[i])
      shutil.copyfile(rest[i], os.path.join(staging, dest))
      rest[i] = dest
  if action == "train" and _option(rest, "--address") is None:
    rest += ["--address", "auto"]
  workdir = parsed.workdir
  if not os.path.isabs(os.path.expanduser(workdir)) and "://" not in workdir:
    print(f"lopt launch: note: --workdir {workdir} is relative: on the "
          "cluster it lands in the job's temporary directory; use an "
          "absolute path on storage every node sees", file=sys.stderr)
  return [action, *rest]


def _entrypoint_resources(text: str | None) -> dict[str, float] | None:
  if not text:
    return None
  try:
    resources = json.loads(text)
    if not isinstance(resources, dict):
      raise ValueError("not an object")
    return {str(k): float(v) for k, v in resources.items()}
  except (ValueError, TypeError) as e:
    raise LaunchError(f"--entrypoint-resources {text!r}: expected a JSON "
                      f"object such as '{{\"TPU\": 4}}' ({e})") from None


def _submit(args, cluster) -> int:
  """Checks the job's arguments here, then uploads and submits it."""
  import infra  # pylint: disable=import-outside-toplevel
  resources = _entrypoint_resources(args.entrypoint_resources)
  root = os.path.dirname(os.path.dirname(os.path.abspath(infra.__file__)))
  modules = [os.path.join(root, m) for m in PACKAGES]
  staging = tempfile.mkdtemp(prefix="lopt-launch-")
  try:
    argv = job_arguments(args.action, args.rest, staging)
    client = _connect(_address(args.address, cluster), cluster)
    entrypoint = "python -m infra.cli " + shlex.join(argv)
    with open(os.path.join(staging, "lopt_job.json"), "w") as f:
      json.dump({"argv": argv, "cluster": cluster.path}, f, indent=2)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    job_id = f"lopt-{args.action}-{stamp}-{secrets.token_hex(2)}"
    print(f"lopt launch: uploading {', '.join(PACKAGES)} and submitting "
          f"{job_id} to {client.get_address()} ({cluster.describe()})",
          file=sys.stderr, flush=True)
    try:
      client.submit_job(
          entrypoint=entrypoint, submission_id=job_id,
          runtime_env={"working_dir": staging, "py_modules": modules,
                       "excludes": EXCLUDES},
          metadata={"lopt_action": args.action, "lopt_cluster": cluster.name},
          entrypoint_resources=resources,
          entrypoint_num_cpus=args.entrypoint_num_cpus)
    except (RuntimeError, ValueError) as e:
      raise LaunchError(f"submitting to {client.get_address()} failed: "
                        f"{str(e).splitlines()[0]}") from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  extra = ""
  if args.address:
    extra = f" --address {shlex.quote(client.get_address())}"
  print(f"submitted job {job_id}: {entrypoint}")
  print(f"follow with `lopt launch{extra} logs {job_id} --follow`; status: "
        f"`lopt launch{extra} status {job_id}`")
  return 0


def job_id_pattern() -> re.Pattern:
  """Matches the job ids ``lopt launch`` makes (for tests and scripts)."""
  return re.compile(r"lopt-(?:train|evaluate)-\d{8}-\d{6}-[0-9a-f]{4}")
