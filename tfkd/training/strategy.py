"""Builds the `tf.distribute.Strategy` that a training run uses.

The strategy is chosen by name (from gin or the command line) and passed explicitly to everything
that needs it; nothing in tfkd reads `tf.distribute.get_strategy()` implicitly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import tensorflow as tf

STRATEGY_KINDS = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(
    kind: str = "default",
    *,
    tpu_address: str | None = None,
    devices: Sequence[str] | None = None,
) -> tf.distribute.Strategy:
    """Returns a distribution strategy.

    Args:
        kind: `"default"` (one device, no distribution), `"mirrored"` (all local GPUs or the given
            `devices`), `"multi_worker"` (`MultiWorkerMirroredStrategy`, cluster read from the
            `TF_CONFIG` environment variable) or `"tpu"`.
        tpu_address: TPU name or `grpc://` address for `kind="tpu"`; `None` or `""` means the
            resolver's default (a local TPU VM).
        devices: device names for `kind="mirrored"`, e.g. `["/cpu:0", "/cpu:1"]` after
            `tf.config.set_logical_device_configuration`. `None` means all visible GPUs, or the CPU.

    Raises:
        ValueError: for an unknown `kind`, or `"multi_worker"` without a usable `TF_CONFIG`.
        RuntimeError: for `"tpu"` when no TPU can be reached.
    """
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=_tf_config_resolver())
    if kind == "tpu":
        return _tpu_strategy(tpu_address)
    raise ValueError(f"unknown strategy kind {kind!r}; expected one of {STRATEGY_KINDS}")


def _tf_config_resolver() -> tf.distribute.cluster_resolver.TFConfigClusterResolver:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "strategy 'multi_worker' needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host0:port", "host1:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        config["task"]["index"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"TF_CONFIG is not a usable cluster spec ({e}): {raw}") from e
    if not workers:
        raise ValueError(f"TF_CONFIG lists no workers: {raw}")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _tpu_strategy(tpu_address: str | None) -> tf.distribute.TPUStrategy:
    # Not testable on CPU machines; every failure is turned into one clear message.
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise RuntimeError(
            f"strategy 'tpu': cannot reach a TPU at {tpu_address or '<local>'!r}: {e}"
        ) from e
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes summaries and logs (always true off multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)
