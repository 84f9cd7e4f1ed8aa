"""The distinct (utterance, label prefix) rows of an N-best list, for `rnnt_nbest`.

Node u of hypothesis n of an RNN-T lattice reads the joint row `z[t, u, :]`, a function of frame t
and of the label prefix `y_1..y_u` only. `nbest_prefix_rows` lists one row per distinct prefix of
each utterance's N-best and says which row every lattice node reads. Pure TF with a
data-dependent row count R (padded up to a bucket size): run it outside XLA-compiled code.
"""

import math
from typing import NamedTuple

import tensorflow as tf

#: Row counts are padded up to `ROW_MULTIPLE · 2^(k/ROW_STEPS_PER_OCTAVE)` rounded up to a
#: multiple of `ROW_MULTIPLE`: at most ~19 % padding, and 4 shapes per doubling of R.
ROW_MULTIPLE = 16
ROW_STEPS_PER_OCTAVE = 4


def _bucket_sizes(multiple=ROW_MULTIPLE, steps=ROW_STEPS_PER_OCTAVE, limit=2**30):
    sizes, k = set(), 0
    while not sizes or max(sizes) < limit:
        size = multiple * 2 ** (k / steps)
        sizes.add(-(-math.ceil(size) // multiple) * multiple)
        k += 1
    return sorted(sizes)


ROW_BUCKETS = tuple(_bucket_sizes())


class PrefixRows(NamedTuple):
    """The distinct prefix rows of an N-best list (see `nbest_prefix_rows`).

    Attributes:
      row_utt: `[R]` int32 utterance b of each row (0 at padding rows).
      row_hyp: `[R]` int32 the hypothesis n that owns the row (0 at padding rows).
      row_pos: `[R]` int32 prefix length u of the row (0 at padding rows).
      node_rows: `[B, N, U+1]` int32 row of every lattice node (b, n, u); in [0, R) everywhere,
        arbitrary (0) where `u > U_{b,n}` or the hypothesis is padding.
      has_rows: `[B, N]` bool, the hypotheses that have rows (not padding).
      num_rows: `[]` int32 real rows; rows `>= num_rows` are padding.
    """

    row_utt: tf.Tensor
    row_hyp: tf.Tensor
    row_pos: tf.Tensor
    node_rows: tf.Tensor
    has_rows: tf.Tensor
    num_rows: tf.Tensor


def row_bucket(num_rows):
    """`[]` int32: the bucket size for `num_rows` real rows (>= `num_rows`, >= 16).

    The smallest of `ROW_BUCKETS`: 16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, ...
    (multiples of 16, then a geometric ratio 2^(1/4)), so that a training run compiles the
    kernels for a bounded number of shapes.
    """
    num_rows = tf.cast(num_rows, tf.int32)
    buckets = tf.constant(ROW_BUCKETS, tf.int32)
    index = tf.searchsorted(buckets, num_rows[None], side="left")[0]
    size = tf.gather(buckets, tf.minimum(index, len(ROW_BUCKETS) - 1))
    return tf.maximum(size, num_rows)


def nbest_prefix_rows(nbest_labels, nbest_lengths, nbest_count=None, pad_to_bucket=True):
    """The distinct (utterance, label prefix) rows of an N-best list.

    Node (b, n, u), u <= U_{b,n}, of a real hypothesis n < `nbest_count[b]` reads its joint row
    from the prefix `y_1..y_u`. Rows are numbered in (b, n, u) order of their owners: the node of
    the lowest-indexed hypothesis with that prefix. Prefix equality is a cumulative product of
    token equality over u on `[B, N, N, U+1]`, so positions beyond a length are never compared.

    Args:
      nbest_labels: `[B, N, U]` integer label ids, padded beyond `nbest_lengths`.
      nbest_lengths: `[B, N]` valid labels per hypothesis, 0 <= U_{b,n} <= U.
      nbest_count: optional `[B]` real hypotheses per utterance (the first `nbest_count[b]`);
        None: all N. Hypotheses beyond it get no rows.
      pad_to_bucket: pad R up to `row_bucket(num_rows)`; False: R = `num_rows` exactly.

    Returns:
      `PrefixRows`. Plain TF with a data-dependent R: run it outside XLA-compiled functions.
    """
    labels = tf.cast(nbest_labels, tf.int32)
    batch, num, max_labels = tf.unstack(tf.shape(labels))
    nodes_u = max_labels + 1
    lengths = tf.clip_by_value(tf.cast(nbest_lengths, tf.int32), 0, max_labels)
    hyp = tf.range(num)
    has_rows = tf.ones([batch, num], tf.bool)
    if nbest_count is not None:
        has_rows &= hyp[None, :] < tf.cast(nbest_count, tf.int32)[:, None]
    u = tf.range(nodes_u)
    exists = has_rows[:, :, None] & (u[None, None, :] <= lengths[:, :, None])  # [B, N, U+1]
    same = tf.cast(tf.equal(labels[:, :, None, :], labels[:, None, :, :]), tf.int32)
    same_prefix = tf.pad(tf.math.cumprod(same, axis=-1), [[0, 0]] * 3 + [[1, 0]], constant_values=1)
    same_prefix = same_prefix > 0
    # owner[b, n, u]: lowest m whose node (b, m, u) exists with the same prefix (n itself if none
    # lower); both nodes exist, so the compared positions < u are real labels of both.
    candidate = same_prefix & exists[:, None, :, :]  # [B, N (n), N (m), U+1]
    owner = tf.reduce_min(tf.where(candidate, hyp[None, None, :, None], num), axis=2)
    owns = exists & tf.equal(owner, hyp[None, :, None])
    owns_flat = tf.reshape(owns, [-1])
    row_of_node = tf.cumsum(tf.cast(owns_flat, tf.int32), exclusive=True)
    num_rows = tf.reduce_sum(tf.cast(owns_flat, tf.int32))
    utt = tf.range(batch)[:, None, None]
    owner_node = (utt * num + tf.minimum(owner, num - 1)) * nodes_u + u[None, None, :]
    node_rows = tf.where(exists, tf.gather(row_of_node, owner_node), 0)
    owners = tf.cast(tf.where(owns), tf.int32)  # [num_rows, 3] in (b, n, u) order
    size = row_bucket(num_rows) if pad_to_bucket else num_rows
    owners = tf.pad(owners, [[0, size - num_rows], [0, 0]])
    row_utt, row_hyp, row_pos = tf.unstack(owners, num=3, axis=1)
    return PrefixRows(row_utt, row_hyp, row_pos, node_rows, has_rows, num_rows)
