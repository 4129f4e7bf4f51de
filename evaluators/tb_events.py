"""Reads scalars from TensorBoard event files, without TensorFlow.

Event files are TFRecord-framed ``Event`` protos (length, masked CRC, data,
masked CRC); tensorboardX ships the proto classes. A truncated last record
(a writer still writing) ends the file quietly.
"""

from __future__ import annotations

import collections
import glob
import os
import struct

from tensorboardX.proto import event_pb2


def _records(path: str):
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return  # partially written record
      yield data


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """``{tag: [(step, value), ...]}`` from every event file under
  ``logdir`` (not recursive), sorted by step; the last write of a step
  wins."""
  out: dict[str, dict[int, float]] = collections.defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for data in _records(path):
      ev = event_pb2.Event()
      try:
        ev.ParseFromString(data)
      except Exception:  # pylint: disable=broad-except
        continue
      for v in ev.summary.value:
        if v.HasField("simple_value"):
          out[v.tag][int(ev.step)] = float(v.simple_value)
  return {tag: sorted(d.items()) for tag, d in out.items()}
