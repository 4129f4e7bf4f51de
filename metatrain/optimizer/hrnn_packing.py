"""Packs the per-parameter HRNN state of a whole params pytree into one slab.

Every trainable (floating, non-empty) params leaf gets a contiguous range of
one flat slab of ``Layout.size`` elements, starting at a multiple of
``Layout.chunk``; the gaps and the tail are padding. The layout is static
Python data derived from the params' shapes and dtypes: every step derives
it again from the gradients (cached), so the state holds only arrays and
its tree structure does not depend on the params (as optax's
``tree_map_params`` needs).

Inside a pass the elements are viewed as (num_chunks, chunk) (see
``ChunkInfo``). Per-tensor sums are taken in two stages: a sum over each
chunk (a reduction over the minor axis, masked where a chunk holds padding)
and a sum of the chunk sums per tensor (a scatter-add over ``size / chunk``
entries, or a one-hot matmul for small problems); per-tensor values are
gathered per chunk and broadcast over the minor axis. The chunk is the
largest power of two up to ``MAX_CHUNK`` whose padding stays within
``MAX_PAD_FRACTION`` of the parameters; slabs below ``MIN_CHUNKED``
elements and problems with many tiny tensors get chunk 1 and no padding.

Slabs longer than ``BLOCK_THRESHOLD`` elements are padded to a multiple of
``BLOCK_SIZE`` and processed by ``blocked_map``: a ``lax.scan`` over blocks
that updates the state in place, so that the pass needs the state plus
O(block) temporaries instead of ~30 full-size temporaries.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# Chunks: the granularity of per-tensor quantities (see the module doc).
# Slabs below MIN_CHUNKED elements use chunk 1 (flat views are faster there).
MIN_CHUNKED = 1 << 14
MAX_CHUNK = 256
MAX_PAD_FRACTION = 1 / 16
# Unblocked slabs with at most this many (chunk, tensor) pairs gather and
# sum per tensor with one-hot matmuls instead of gathers and scatter-adds,
# which are slow in the meta-gradient (vmapped over tasks, differentiated).
DENSE_LIMIT = 1 << 16
# Blocking: slabs above the threshold run as a scan over blocks.
BLOCK_THRESHOLD = 1 << 17
BLOCK_SIZE = 1 << 15


def is_trainable(leaf) -> bool:
  return bool(jnp.issubdtype(jnp.result_type(leaf), jnp.inexact))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each params leaf lives in the slab (static, hashable)."""

  sizes: tuple[int, ...]  # elements of each params leaf; 0: no state
  offsets: tuple[int, ...]  # start of each leaf in the slab
  chunk: int  # leaves start at multiples of this
  block: int  # elements per block (== size when unblocked)
  size: int  # slab length, a multiple of chunk and block
  dense: bool  # per-tensor gathers and sums by one-hot matmuls

  @property
  def live(self) -> tuple[int, ...]:
    """Indices of the leaves with state, in order (tensor i = live[i])."""
    return tuple(i for i, n in enumerate(self.sizes) if n)

  @property
  def num_tensors(self) -> int:
    return len(self.live)

  @property
  def num_params(self) -> int:
    return sum(self.sizes)

  @property
  def num_blocks(self) -> int:
    return self.size // self.block if self.block else 0

  @property
  def num_chunks(self) -> int:
    return self.size // self.chunk

  @functools.cached_property
  def chunk_tensor(self) -> np.ndarray:
    """Tensor index of every chunk (padding chunks: the previous tensor)."""
    ids = np.zeros(self.num_chunks, np.int32)
    for t, i in enumerate(self.live):
      ids[self.offsets[i] // self.chunk:] = t
    return ids

  @functools.cached_property
  def chunk_count(self) -> np.ndarray:
    """Number of real (non-padding) elements in every chunk."""
    cnt = np.zeros(self.num_chunks, np.int32)
    for i in self.live:
      a, n = self.offsets[i] // self.chunk, self.sizes[i]
      full = n // self.chunk
      cnt[a:a + full] = self.chunk
      if n % self.chunk:
        cnt[a + full] = n % self.chunk
    return cnt

  def onehot(self, dtype) -> jax.Array:
    """(num_chunks, num_tensors) one-hot map of chunks to tensors."""
    eye = np.arange(self.num_tensors)[None, :] == self.chunk_tensor[:, None]
    return jnp.asarray(eye, dtype)

  @property
  def padded(self) -> bool:
    return self.size != self.num_params

  def check(self, leaves) -> None:
    """Raises ValueError unless ``leaves`` (e.g. grads) fit this layout."""
    if len(leaves) != len(self.sizes):
      raise ValueError(
          f"grads have {len(leaves)} leaves but the HRNN state was built for "
          f"{len(self.sizes)}; call init() with params of the same structure")
    for i in self.live:
      if np.size(leaves[i]) != self.sizes[i]:
        raise ValueError(
            f"grad leaf {i} has {np.size(leaves[i])} elements but the state "
            f"expects {self.sizes[i]}")

  def tensor_sizes(self, dtype) -> jax.Array:
    return jnp.asarray([self.sizes[i] for i in self.live], dtype)


def _padding(sizes, chunk) -> int:
  return sum(-n % chunk for n in sizes)


def make_layout(leaves) -> Layout:
  """The layout of a list of params leaves (arrays or shape structs)."""
  sizes = tuple(int(np.size(x)) if is_trainable(x) else 0 for x in leaves)
  # The module's constants are part of the key (tests change them).
  return _layout(sizes, MIN_CHUNKED, MAX_CHUNK, MAX_PAD_FRACTION,
                 BLOCK_THRESHOLD, BLOCK_SIZE, DENSE_LIMIT)


@functools.lru_cache(maxsize=256)
def _layout(sizes: tuple[int, ...], *constants) -> Layout:
  """``make_layout`` of leaves with these trainable sizes (0: no state);
  cached, as every ``update`` derives the layout from its grads."""
  del constants  # read from the module below; a cache key only
  live = [n for n in sizes if n]
  total = sum(live)
  chunk = 1
  while (total >= MIN_CHUNKED and 2 * chunk <= MAX_CHUNK and
         _padding(live, 2 * chunk) <= MAX_PAD_FRACTION * total):
    chunk *= 2
  offsets, end = [], 0
  for n in sizes:
    offsets.append(end)
    end += -(-n // chunk) * chunk
  if end > BLOCK_THRESHOLD:
    # About BLOCK_SIZE, a multiple of the chunk and of 128, with less than
    # 128 elements of padding per block.
    nb = -(-end // BLOCK_SIZE)
    q = max(chunk, 128)
    block = -(-end // (nb * q)) * q
    size = nb * block
  else:
    block = size = end
  dense = block == size and (size // chunk) * len(live) <= DENSE_LIMIT
  return Layout(sizes=tuple(sizes), offsets=tuple(offsets), chunk=chunk,
                block=block, size=size, dense=dense)


def pack(layout: Layout, leaves, dtype) -> jax.Array:
  """Concatenates the live leaves, flattened and cast, into a [size] slab."""
  pieces, end = [], 0
  for i in layout.live:
    if layout.offsets[i] > end:
      pieces.append(jnp.zeros((layout.offsets[i] - end,), dtype))
    pieces.append(jnp.reshape(leaves[i], (-1,)).astype(dtype))
    end = layout.offsets[i] + layout.sizes[i]
  if layout.size > end:
    pieces.append(jnp.zeros((layout.size - end,), dtype))
  return jnp.concatenate(pieces) if pieces else jnp.zeros((0,), dtype)


def live_mask(layout: Layout, dtype) -> jax.Array:
  """(size,) 1 on the slab's parameter elements, 0 on its padding."""
  mask = np.zeros((layout.size,), np.dtype(dtype))
  for i in layout.live:
    mask[layout.offsets[i]:layout.offsets[i] + layout.sizes[i]] = 1
  return jnp.asarray(mask)


def unpack(layout: Layout, flat: jax.Array) -> dict[int, jax.Array]:
  """Splits a (..., size) slab into {leaf index: (..., n) piece}.

  One ``split`` (its transpose is one concatenate), not a slice per leaf.
  """
  cuts = set()
  for i in layout.live:
    cuts.update((layout.offsets[i], layout.offsets[i] + layout.sizes[i]))
  cuts = sorted(c for c in cuts if 0 < c < layout.size)
  pieces = jnp.split(flat, cuts, axis=-1)
  index = {start: k for k, start in enumerate([0] + cuts)}
  return {i: pieces[index[layout.offsets[i]]] for i in layout.live}


# ----------------------------------------------------------------------------
# Chunk-level helpers, used inside a pass over one block.


@dataclasses.dataclass(frozen=True)
class ChunkInfo:
  """Chunk-level data of one block, and its per-element view.

  Inside a pass, per-element arrays are viewed as (..., nc, chunk) when
  ``chunk > 1``, so that a per-chunk value is a broadcast over the minor
  axis and a per-chunk sum a reduction over it. (Broadcasting per-chunk
  values to a flat (..., n) array instead makes XLA:CPU compile the whole
  GRU fusion to scalar code, about 2x slower.) With ``chunk == 1`` the view
  is the flat (..., n) array itself.
  """

  chunk: int
  ids: jax.Array  # (nc,) int32 tensor index of each chunk
  mask: jax.Array | None  # element view of the padding mask, or None
  onehot: jax.Array | None = None  # (nc, num_tensors), see Layout.dense

  def view(self, x: jax.Array) -> jax.Array:
    """(..., n) -> the per-element view."""
    if self.chunk == 1:
      return x
    return x.reshape(x.shape[:-1] + (x.shape[-1] // self.chunk, self.chunk))

  def unview(self, x: jax.Array) -> jax.Array:
    """The per-element view -> (..., n)."""
    return x if self.chunk == 1 else x.reshape(x.shape[:-2] + (-1,))

  def add_per_tensor(self, x: jax.Array, table: jax.Array) -> jax.Array:
    """(k, *view) values plus a (num_tensors, k) per-tensor table."""
    if self.onehot is not None:
      v = table.T @ self.onehot.T.astype(table.dtype)
    else:
      v = jnp.take(table, self.ids, axis=0).T
    return x + (v if self.chunk == 1 else v[:, :, None])

  def sums(self, x: jax.Array) -> jax.Array:
    """(k, *view) per-element values -> (k, nc) masked per-chunk sums."""
    if self.mask is not None:
      x = x * self.mask
    return x if self.chunk == 1 else jnp.sum(x, axis=-1)


def _chunk_info(layout: Layout, ids, cnt) -> ChunkInfo:
  mask = None
  if cnt is not None:
    pos = jnp.arange(layout.chunk, dtype=jnp.int32)
    mask = pos[None, :] < cnt[:, None]
    if layout.chunk == 1:
      mask = mask[:, 0]
  return ChunkInfo(layout.chunk, ids, mask)


def segment_sums(layout: Layout, chunk_sums: jax.Array) -> jax.Array:
  """(k, num_chunks) chunk sums -> (num_tensors, k) per-tensor sums."""
  if layout.num_tensors == 1:
    return jnp.sum(chunk_sums, axis=1)[None]
  if layout.dense:
    return (chunk_sums @ layout.onehot(chunk_sums.dtype)).T
  ids = jnp.asarray(layout.chunk_tensor)
  out = jnp.zeros((layout.num_tensors, chunk_sums.shape[0]), chunk_sums.dtype)
  return out.at[ids].add(chunk_sums.T, indices_are_sorted=True)


# ----------------------------------------------------------------------------
# The blocked pass.


PassFn = Callable[[dict, jax.Array, ChunkInfo], tuple[dict, Any, Any]]


def blocked_map(layout: Layout, fn: PassFn, slabs: dict[str, jax.Array],
                g: jax.Array) -> tuple[dict[str, jax.Array], Any, Any]:
  """Applies a per-element pass to the whole slab, block by block.

  Args:
    layout: the slab layout.
    fn: ``fn(slabs, g, info) -> (new_slabs, elem_outs, chunk_outs)`` on one
      block, all per-element arrays in ``info``'s view: slabs (rows, *view)
      or (*view), ``g`` (*view); ``elem_outs`` a pytree of (*view) arrays,
      ``chunk_outs`` one of (k, nc) per-chunk arrays.
    slabs: the state slabs, (rows, size) or (size,).
    g: the (size,) gradient slab.

  Returns:
    ``(new_slabs, elem_outs, chunk_outs)`` over the whole slab, as (rows,
    size), (size,) and (k, num_chunks). With one block this is ``fn``
    itself; with several, a ``lax.scan`` that reads and writes the state
    slabs in place (dynamic slices of the carry), so that its memory is the
    state plus the temporaries of one block.
  """
  ids = np.asarray(layout.chunk_tensor)
  cnt = np.asarray(layout.chunk_count) if layout.padded else None

  def run(slabs, g, ids, cnt):
    info = _chunk_info(layout, ids, cnt)
    if layout.dense:
      info = dataclasses.replace(info, onehot=layout.onehot(jnp.float32))
    new, elem, sums = fn({k: info.view(v) for k, v in slabs.items()},
                         info.view(g), info)
    unview = lambda t: jax.tree_util.tree_map(info.unview, t)
    return unview(new), unview(elem), sums

  nb, blk = layout.num_blocks, layout.block
  if nb <= 1:
    return run(slabs, g, jnp.asarray(ids),
               None if cnt is None else jnp.asarray(cnt))
  ncb = blk // layout.chunk

  def read(slabs, i):
    return {k: jax.lax.dynamic_index_in_dim(v, i, axis=v.ndim - 2,
                                            keepdims=False)
            for k, v in slabs.items()}

  def write(slabs, blocks, i):
    return {k: jax.lax.dynamic_update_index_in_dim(
        v, blocks[k].astype(v.dtype), i, axis=v.ndim - 2)
            for k, v in slabs.items()}

  # Each iteration first writes the previous block's results, then reads its
  # own block from the updated slabs. The write then depends on nothing read
  # in the iteration, and the reads depend on the write, so XLA updates the
  # slabs in place. (Writing block i after reading it makes XLA copy the
  # whole slabs every iteration: it fuses the reads of the old values into
  # several consumers, some of which it schedules after the write.)
  def body(carry, xs):
    slabs, pending = carry
    i, g_b, ids_b, cnt_b = xs
    slabs = write(slabs, pending, jnp.maximum(i - 1, 0))
    new, elem, sums = run(read(slabs, i), g_b, ids_b, cnt_b)
    return (slabs, new), (elem, sums)

  xs = (jnp.arange(nb), g.reshape(nb, blk), jnp.asarray(ids.reshape(nb, ncb)),
        None if cnt is None else jnp.asarray(cnt.reshape(nb, ncb)))
  # (..., size) -> (..., nb, blk): a free reshape.
  slabs = {k: v.reshape(v.shape[:-1] + (nb, blk)) for k, v in slabs.items()}
  (slabs, pending), outs = jax.lax.scan(body, (slabs, read(slabs, 0)), xs)
  slabs = write(slabs, pending, nb - 1)
  new = {k: v.reshape(v.shape[:-2] + (layout.size,)) for k, v in slabs.items()}
  # Stacked (nb, ..., m) outputs -> (..., nb * m).
  elem, sums = jax.tree_util.tree_map(
      lambda y: jnp.moveaxis(y, 0, -2).reshape(y.shape[1:-1] + (-1,)), outs)
  return new, elem, sums
