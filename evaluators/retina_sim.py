"""A simulated retina: stimuli, LN-LN model ganglion cells, Poisson spikes.

The evaluation task of McIntosh et al. (NeurIPS 2016, "Deep learning models
of the retinal response to natural scenes"), with a simulated retina in place
of the salamander recordings, so that it runs anywhere in a few seconds.

Stimuli are movies on an ``H x W`` grid, zero mean and unit variance:

* ``white``: spatiotemporal white noise, binary (+-1) or Gaussian;
* ``natural``: 1/f ("pink") noise images, whose power spectrum falls as
  ``1/f^2`` like natural scenes, each viewed for ``fixation_frames`` frames
  through a window that drifts by small random steps (fixational jitter) and
  jumps to a new image and place at each saccade.

Each model ganglion cell is an LN-LN cascade. Bipolar-like subunits tile the
grid; a subunit filters the stimulus with a difference-of-Gaussians centre-
surround in space times a biphasic temporal kernel over the last ``history``
frames, and is half-wave rectified. ON cells pool ON subunits, OFF cells pool
OFF subunits (sign-inverted), with Gaussian weights around the cell's centre.
The pooled drive, standardised on the training stimulus, passes through a
softplus spiking nonlinearity giving a rate (spikes per frame), and spike
counts are Poisson. The held-out segment is shown ``repeats`` times with
independent spikes; the target is the trial-averaged count.

The defaults (16x16 grid, 8 cells, subunits rectified one std above their
mean) take about a second to simulate and make the cells clearly non-linear:
on white noise, an LN model with the best filter (fit on 100k frames of true
rates) reaches a held-out correlation of about 0.6, against about 0.96 for the
true rate (the noise ceiling of 8 trials).

Frame ``t`` of a target (spike counts at ``t``) depends on the stimulus
frames ``t - history + 1 .. t``. Stimulus windows put frames on the last axis,
oldest first (the current frame is channel ``history - 1``), as in McIntosh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Union

import numpy as np


@dataclasses.dataclass(frozen=True)
class RetinaSimConfig:
  """Everything that defines one simulated retina and its recordings.

  Attributes:
    stimulus: ``"white"`` or ``"natural"``.
    size: the stimulus grid is ``size x size`` pixels.
    num_cells: number of ganglion cells, alternately ON and OFF.
    history: frames of stimulus each response depends on (and model input).
    train_frames: training targets (the movie has ``history - 1`` more).
    test_frames: held-out targets.
    repeats: trials of the held-out segment.
    seed: makes everything (retina, stimuli, spikes) deterministic.
    white_noise: ``"binary"`` (+-1 pixels) or ``"gaussian"``.
    fixation_frames: frames between saccades (natural stimulus).
    image_size: side of the 1/f source images (natural stimulus).
    num_images: number of source images per segment (natural stimulus).
    subunit_spacing: pixels between neighbouring subunits.
    subunit_sigma: centre sigma of a subunit's DoG, pixels.
    surround_scale: surround sigma / centre sigma.
    surround_weight: integrated surround / integrated centre.
    subunit_threshold: subunit rectification threshold, in subunit stds.
    pool_sigma: sigma of the Gaussian pooling of subunits, pixels (varied
      per cell by up to +-25%).
    spike_gain: slope of the softplus spiking nonlinearity.
    spike_threshold: its threshold, in stds of the pooled drive.
    mean_rate: mean spikes per frame of each cell on the training stimulus.
  """

  stimulus: str = "white"
  size: int = 16
  num_cells: int = 8
  history: int = 40
  train_frames: int = 20000
  test_frames: int = 500
  repeats: int = 8
  seed: int = 0
  white_noise: str = "binary"
  fixation_frames: int = 20
  image_size: int = 64
  num_images: int = 64
  subunit_spacing: float = 2.0
  subunit_sigma: float = 0.8
  surround_scale: float = 3.0
  surround_weight: float = 0.7
  subunit_threshold: float = 1.0
  pool_sigma: float = 2.0
  spike_gain: float = 2.0
  spike_threshold: float = 0.5
  mean_rate: float = 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class RetinaData:
  """A simulated recording. All arrays are read-only.

  Attributes:
    config: the config it was simulated from.
    train_stimulus: float32 ``[train_frames + history - 1, H, W]``.
    train_spikes: float32 counts ``[train_frames, num_cells]``.
    train_rate: float32 true rates ``[train_frames, num_cells]``.
    test_stimulus: float32 ``[test_frames + history - 1, H, W]``.
    test_spikes: float32 counts ``[repeats, test_frames, num_cells]``.
    test_rate: float32 true rates ``[test_frames, num_cells]``.
    centers: float ``[num_cells, 2]`` cell centres (row, column), pixels.
    polarity: int ``[num_cells]``, +1 for ON and -1 for OFF cells.
  """

  config: RetinaSimConfig
  train_stimulus: np.ndarray
  train_spikes: np.ndarray
  train_rate: np.ndarray
  test_stimulus: np.ndarray
  test_spikes: np.ndarray
  test_rate: np.ndarray
  centers: np.ndarray
  polarity: np.ndarray


DataOrConfig = Union[RetinaData, RetinaSimConfig, None]


def white_noise(rng: np.random.Generator, frames: int, size: int,
                kind: str = "binary") -> np.ndarray:
  """Spatiotemporal white noise ``[frames, size, size]``, unit variance."""
  if kind == "binary":
    return rng.choice(np.array([-1.0, 1.0]), size=(frames, size, size))
  if kind == "gaussian":
    return rng.standard_normal((frames, size, size))
  raise ValueError(f"unknown white noise kind {kind!r}")


def pink_images(rng: np.random.Generator, num: int, size: int) -> np.ndarray:
  """``num`` periodic 1/f-amplitude noise images, each zero mean, unit var."""
  f = np.fft.fftfreq(size)
  radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
  amplitude = np.zeros_like(radius)
  amplitude[radius > 0] = 1.0 / radius[radius > 0]
  noise = np.fft.fft2(rng.standard_normal((num, size, size)))
  images = np.fft.ifft2(noise * amplitude).real
  images -= images.mean(axis=(1, 2), keepdims=True)
  return images / images.std(axis=(1, 2), keepdims=True)


def natural_movie(rng: np.random.Generator, frames: int, size: int,
                  fixation_frames: int = 20, image_size: int = 64,
                  num_images: int = 64) -> np.ndarray:
  """A natural-like movie ``[frames, size, size]`` of jittered 1/f images.

  At each saccade the window jumps to a random image and position; between
  saccades it moves by a random step in {-1, 0, 1} pixels per axis per frame,
  reflected at the image border. The movie is normalised to zero mean and
  unit variance.
  """
  if image_size < size:
    raise ValueError(f"image_size {image_size} < stimulus size {size}")
  images = pink_images(rng, num_images, image_size)
  span = image_size - size  # positions 0..span
  movie = np.empty((frames, size, size))
  pos, img = np.zeros(2, np.int64), 0
  steps = rng.integers(-1, 2, size=(frames, 2))
  for t in range(frames):
    if t % fixation_frames == 0:
      img = rng.integers(num_images)
      pos = rng.integers(0, span + 1, size=2)
    else:
      pos = pos + steps[t]
      pos = np.where(pos < 0, -pos, pos)
      pos = np.where(pos > span, 2 * span - pos, pos)
    movie[t] = images[img, pos[0]:pos[0] + size, pos[1]:pos[1] + size]
  movie -= movie.mean()
  return movie / movie.std()


def make_stimulus(cfg: RetinaSimConfig, rng: np.random.Generator,
                  frames: int) -> np.ndarray:
  """A movie of ``cfg.stimulus`` kind, ``[frames, size, size]`` float64."""
  if cfg.stimulus == "white":
    return white_noise(rng, frames, cfg.size, cfg.white_noise)
  if cfg.stimulus == "natural":
    return natural_movie(rng, frames, cfg.size, cfg.fixation_frames,
                         cfg.image_size, cfg.num_images)
  raise ValueError(f"unknown stimulus {cfg.stimulus!r}")


def _gaussian(d2: np.ndarray, sigma: float) -> np.ndarray:
  g = np.exp(-d2 / (2.0 * sigma ** 2))
  return g / g.sum(axis=-1, keepdims=True)


def temporal_kernel(history: int, tau: float = 2.0, ratio: float = 2.0,
                    weight: float = 0.8, order: int = 3) -> np.ndarray:
  """A biphasic kernel over lags ``0..history-1`` (lag 0 = current frame).

  The difference of two gamma-like lobes ``t^order exp(-t / tau)``: a fast
  positive lobe peaking at ``order * tau`` frames and a slower negative one
  (time constant ``ratio * tau``, relative area ``weight``); unit L2 norm.
  """
  t = np.arange(history, dtype=np.float64)
  fast = t ** order * np.exp(-t / tau)
  slow = t ** order * np.exp(-t / (ratio * tau))
  k = fast / fast.sum() - weight * slow / slow.sum()
  return k / np.linalg.norm(k)


@dataclasses.dataclass(frozen=True)
class _Retina:
  """Fixed parameters of the simulated retina (independent of stimuli)."""

  dog: np.ndarray  # [num_subunits, H * W] spatial filters (ON sign)
  kernels: np.ndarray  # [2, history] temporal kernels, ON then OFF
  pool: np.ndarray  # [num_cells, 2 * num_subunits] over ON then OFF subunits
  centers: np.ndarray  # [num_cells, 2]
  polarity: np.ndarray  # [num_cells]


def _make_retina(cfg: RetinaSimConfig, rng: np.random.Generator) -> _Retina:
  size = cfg.size
  pix = np.stack(np.meshgrid(np.arange(size), np.arange(size),
                             indexing="ij"), -1).reshape(-1, 2) + 0.5
  ticks = np.arange(cfg.subunit_spacing / 2, size, cfg.subunit_spacing)
  subs = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2)
  d2 = ((subs[:, None, :] - pix[None, :, :]) ** 2).sum(-1)
  dog = (_gaussian(d2, cfg.subunit_sigma) - cfg.surround_weight * _gaussian(
      d2, cfg.subunit_sigma * cfg.surround_scale))
  # The OFF pathway is a little faster, as in many retinas.
  kernels = np.stack([temporal_kernel(cfg.history, tau=2.0),
                      temporal_kernel(cfg.history, tau=1.6, ratio=2.5)])
  n = cfg.num_cells
  polarity = np.where(np.arange(n) % 2 == 0, 1, -1)
  # Centres in the middle 60% of the grid, so receptive fields fit.
  centers = size * (0.2 + 0.6 * rng.random((n, 2)))
  sigmas = cfg.pool_sigma * rng.uniform(0.75, 1.25, size=n)
  w = np.exp(-((centers[:, None, :] - subs[None, :, :]) ** 2).sum(-1) /
             (2.0 * sigmas[:, None] ** 2))
  w = np.where(w > 0.05, w, 0.0)
  w /= w.sum(axis=1, keepdims=True)
  on = (polarity > 0)[:, None]
  pool = np.concatenate([np.where(on, w, 0.0), np.where(on, 0.0, w)], axis=1)
  return _Retina(dog, kernels, pool, centers, polarity)


def _causal_filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """``y[t] = sum_l kernel[l] x[t + L - 1 - l]`` for the valid ``t`` (FFT)."""
  frames, taps = x.shape[0], kernel.shape[0]
  n = frames + taps - 1
  y = np.fft.irfft(np.fft.rfft(x, n, axis=0) *
                   np.fft.rfft(kernel, n)[:, None], n, axis=0)
  return y[taps - 1:frames]


def _subunits(retina: _Retina, movie: np.ndarray) -> np.ndarray:
  """Linear subunit drives ``[frames - history + 1, 2 * num_subunits]``."""
  spatial = movie.reshape(movie.shape[0], -1) @ retina.dog.T
  on = _causal_filter(spatial, retina.kernels[0])
  off = -_causal_filter(spatial, retina.kernels[1])
  return np.concatenate([on, off], axis=1)


def _readonly(x: np.ndarray, dtype=np.float32) -> np.ndarray:
  x = np.ascontiguousarray(x, dtype=dtype)
  x.setflags(write=False)
  return x


def simulate_retina(config: RetinaSimConfig | None = None) -> RetinaData:
  """Simulates a retina and its recordings (cached per config).

  Args:
    config: the simulation config; None means ``RetinaSimConfig()``.

  Returns:
    The (shared, read-only) RetinaData; a few seconds at most the first time
    for the default config, a cache look-up after that.
  """
  return _simulate(config or RetinaSimConfig())


@functools.lru_cache(maxsize=4)
def _simulate(cfg: RetinaSimConfig) -> RetinaData:
  if min(cfg.history, cfg.train_frames, cfg.test_frames, cfg.repeats,
         cfg.num_cells, cfg.size) < 1:
    raise ValueError(f"sizes and counts must be >= 1: {cfg}")
  streams = [np.random.default_rng(s) for s in
             np.random.SeedSequence(cfg.seed).spawn(5)]
  retina = _make_retina(cfg, streams[0])
  pad = cfg.history - 1
  train_movie = make_stimulus(cfg, streams[1], cfg.train_frames + pad)
  test_movie = make_stimulus(cfg, streams[2], cfg.test_frames + pad)

  train_sub = _subunits(retina, train_movie)
  sub_std = train_sub.std(axis=0) + 1e-12  # subunit drives in units of std

  def drive(sub):
    rect = np.maximum(sub / sub_std - cfg.subunit_threshold, 0.0)
    return rect @ retina.pool.T

  train_drive = drive(train_sub)
  mu, sd = train_drive.mean(axis=0), train_drive.std(axis=0) + 1e-12

  def rate_fn(g):
    z = (g - mu) / sd - cfg.spike_threshold
    return np.logaddexp(0.0, cfg.spike_gain * z)  # softplus

  train_rate = rate_fn(train_drive)
  scale = cfg.mean_rate / train_rate.mean(axis=0)
  train_rate = train_rate * scale
  test_rate = rate_fn(drive(_subunits(retina, test_movie))) * scale

  train_spikes = streams[3].poisson(train_rate)
  test_spikes = streams[4].poisson(
      np.broadcast_to(test_rate, (cfg.repeats,) + test_rate.shape))
  return RetinaData(
      config=cfg,
      train_stimulus=_readonly(train_movie),
      train_spikes=_readonly(train_spikes),
      train_rate=_readonly(train_rate),
      test_stimulus=_readonly(test_movie),
      test_spikes=_readonly(test_spikes),
      test_rate=_readonly(test_rate),
      centers=_readonly(retina.centers, np.float64),
      polarity=_readonly(retina.polarity, np.int64))


def _data(data_or_config: DataOrConfig) -> RetinaData:
  if isinstance(data_or_config, RetinaData):
    return data_or_config
  return simulate_retina(data_or_config)


def _windows(movie: np.ndarray, history: int) -> np.ndarray:
  """A read-only view ``[frames - history + 1, H, W, history]`` of a movie."""
  return np.lib.stride_tricks.sliding_window_view(movie, history, axis=0)


def retina_batches(data_or_config: DataOrConfig = None, batch_size: int = 64,
                   seed: int = 0, split: str = "train") -> Iterator[dict]:
  """Shuffled minibatches, forever, deterministic from ``seed``.

  Each epoch visits every target frame once in a random order (the last
  partial batch of an epoch is dropped).

  Args:
    data_or_config: a RetinaData, a RetinaSimConfig or None (defaults).
    batch_size: targets per batch.
    seed: seed of the shuffling.
    split: ``"train"`` (single-trial spike counts) or ``"test"`` (the held-
      out segment, with trial-averaged counts as ``"spikes"``).

  Returns:
    An iterator of ``{"stimulus": float32 [B, H, W, history], "spikes":
    float32 [B, N]}``; the stimulus holds the frames up to and including
    the target frame, oldest first.
  """
  data = _data(data_or_config)
  if split == "train":
    movie, targets = data.train_stimulus, data.train_spikes
  elif split == "test":
    movie = data.test_stimulus
    targets = data.test_spikes.mean(axis=0, dtype=np.float32)
  else:
    raise ValueError(f"unknown split {split!r}")
  n = targets.shape[0]
  if not 1 <= batch_size <= n:
    raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
  return _batches(_windows(movie, data.config.history), targets, batch_size,
                  np.random.default_rng(seed))


def _batches(windows: np.ndarray, targets: np.ndarray, batch_size: int,
             rng: np.random.Generator) -> Iterator[dict]:
  n = targets.shape[0]
  while True:
    order = rng.permutation(n)
    for i in range(0, n - batch_size + 1, batch_size):
      idx = order[i:i + batch_size]
      yield {"stimulus": np.ascontiguousarray(windows[idx]),
             "spikes": np.ascontiguousarray(targets[idx], np.float32)}


def _build_test_set(data: RetinaData) -> dict:
  return {
      "stimulus": _readonly(_windows(data.test_stimulus, data.config.history)),
      "rate_mean": _readonly(data.test_spikes.mean(axis=0)),
      "true_rate": data.test_rate,
  }


@functools.lru_cache(maxsize=4)
def _cached_test_set(config: RetinaSimConfig) -> dict:
  return _build_test_set(_simulate(config))


def retina_test_set(data_or_config: DataOrConfig = None) -> dict:
  """The held-out segment as arrays (read-only, cached per config).

  Returns:
    ``{"stimulus": float32 [T_test, H, W, history], "rate_mean": trial-
    averaged spike counts float32 [T_test, N], "true_rate": [T_test, N]}``.
  """
  if isinstance(data_or_config, RetinaData):
    return _build_test_set(data_or_config)
  return dict(_cached_test_set(data_or_config or RetinaSimConfig()))
