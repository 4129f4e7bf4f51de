"""Time from `lopt train`'s start to its first progress line, cold then warm.

Runs `lopt train --config CONFIG --workers 1 --steps 3` twice in fresh
workdirs with a private, emptied compile cache (XDG_CACHE_HOME) and prints
the time to the first meta-step, the total, and the compile count of the
last progress line. Usage (from the repo root, in a loopback namespace):

  python benchmarks/warm_start.py [CONFIG]
"""
import os, shutil, subprocess, sys, time
cache = "/tmp/warm-xdg"
shutil.rmtree(cache, ignore_errors=True)
env = dict(os.environ, XDG_CACHE_HOME=cache)
env.pop("JAX_COMPILATION_CACHE_DIR", None)
for run in ("cold", "warm"):
  wd = f"/tmp/warm-{run}"
  shutil.rmtree(wd, ignore_errors=True)
  t0 = time.time()
  p = subprocess.Popen([sys.executable, "-m", "infra.cli", "train", "--workdir", wd, "--config", sys.argv[1] if len(sys.argv) > 1 else "default",
                        "--workers", "1", "--steps", "3"], stderr=subprocess.PIPE, text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  first, last = None, "?"
  for line in p.stderr:
    if line.startswith("step ") and first is None:
      first = time.time() - t0
    if "compiles" in line and line.startswith("step"):
      last = line.split("compiles")[-1].strip()
  p.wait()
  print(f"{run}: first meta-step after {first:.1f}s, total {time.time()-t0:.1f}s, compiles at end {last}, rc {p.returncode}", flush=True)
