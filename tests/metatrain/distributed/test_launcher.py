"""The launcher's checks that need no Ray: resources and the progress line."""

import dataclasses

import pytest

from metatrain.distributed import launcher
from metatrain.training import config as config_lib

CFG = config_lib.load("tiny", [])


def test_workers_that_cannot_fit_the_local_ray_are_refused_with_the_fit():
  with pytest.raises(launcher.ResourceError) as err:
    launcher.check_fit(CFG, 999, {"CPU": 2.0}, local=True)
  msg = str(err.value)
  assert msg.startswith("999 workers (worker.num_cpus=1 each) and 0 "
                        "evaluator(s) need 999 CPU (it has 2)")
  assert "use --workers 2 or fewer" in msg
  with_evals = dataclasses.replace(CFG, evaluator=dataclasses.replace(
      CFG.evaluator, count=1))
  with pytest.raises(launcher.ResourceError, match="use --workers 1 or"):
    launcher.check_fit(with_evals, 2, {"CPU": 2.0}, local=True)


def test_what_fits_passes_and_a_cluster_only_warns():
  lines = []
  launcher.check_fit(CFG, 2, {"CPU": 2.0}, local=True, log=lines.append)
  assert lines == []
  gpu = dataclasses.replace(CFG, worker=dataclasses.replace(CFG.worker,
                                                            num_gpus=1.0))
  launcher.check_fit(gpu, 4, {"CPU": 64.0, "GPU": 2.0}, local=False,
                     log=lines.append)
  assert lines == ["lopt: warning: 4 workers (worker.num_cpus=1 each) and 0 "
                   "evaluator(s) need 4 GPU (it has 2) in the cluster now; "
                   "the rest start when nodes join"]


@pytest.mark.parametrize("seconds,text", [(0.4, "0s"), (59.6, "1m"),
                                          (61, "1m"), (3599, "59m"),
                                          (3600, "1h00m"), (8280, "2h18m")])
def test_the_time_left_reads_like_a_clock(seconds, text):
  assert launcher._duration(seconds) == text  # pylint: disable=protected-access
