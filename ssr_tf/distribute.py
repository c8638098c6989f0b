"""tf.distribute plumbing for `ssr_tf train`: strategies, embedding partitioning, clusters.

One ``distribution:`` config section picks the strategy:

* ``default``: one device.
* ``mirrored``: synchronous replicas on the GPUs of one host (or ``devices``, or logical
  CPU devices in tests); gradients all-reduced each step.
* ``multi_worker_mirrored``: the same across the workers listed in TF_CONFIG, one
  ``ssr_tf train`` process per worker.
* ``parameter_server``: asynchronous workers; variables live on parameter servers and
  embedding tables matching ``embedding_pattern`` are split into shards across them
  (``tf.distribute.experimental.partitioners``). The chief runs ``ssr_tf train`` as the
  coordinator (a ``ClusterCoordinator`` schedules steps on the workers); worker and ps
  tasks run the same command, which starts their server and blocks.

The learning-rate scaling and warm-up that a larger global batch calls for
(``distribution.lr_scaling``, ``lr_warmup_steps``) are built with every other rate in
ssr_tf/schedules.py.

Gradients are averaged over replicas (the model's per-replica losses are batch means),
and embedding gradients stay ``tf.IndexedSlices`` through the all-reduce: the check in
:class:`DistributedGradients` fails (``sparse_gradients: require``) if a table's gradient
arrives dense, which would all-reduce the whole table every step.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import weakref
from typing import Iterator

import tensorflow as tf

from ssr_tf.config import DistributionConfig
from ssr_tf.errors import ConfigError

_naming = threading.local()
_local_cluster: dict = {}
_ps_clusters: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------
# Devices and clusters.


def configure_devices(dist: DistributionConfig) -> None:
  """Splits the CPU into ``num_logical_cpu_devices`` logical devices (before TF starts)."""
  n = dist.num_logical_cpu_devices
  if n <= 1:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
  except RuntimeError:
    have = len(tf.config.list_logical_devices("CPU"))
    if have != n:
      raise ConfigError(
          f"config key 'distribution.num_logical_cpu_devices': TensorFlow already started in "
          f"this process with {have} CPU device(s); set it to {have} or run in a fresh "
          "process") from None


def tf_config(dist: DistributionConfig) -> dict:
  """The cluster description: ``distribution.tf_config`` if set, else $TF_CONFIG ({} if none)."""
  raw = dist.tf_config or os.environ.get("TF_CONFIG", "")
  if not raw:
    return {}
  try:
    return json.loads(raw)
  except ValueError as e:
    raise ConfigError(f"TF_CONFIG is not valid JSON ({e})") from None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def local_cluster(workers: int, ps: int) -> tf.distribute.cluster_resolver.ClusterResolver:
  """Starts `workers` worker and `ps` parameter servers in this process on 127.0.0.1 and
  returns the chief's resolver (started once per process; servers cannot be stopped)."""
  key = (workers, ps)
  if key not in _local_cluster:
    if _local_cluster:
      raise ConfigError("config key 'distribution.local_workers': this process already runs "
                        f"an in-process cluster of {next(iter(_local_cluster))} (workers, ps)")
    spec = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(workers)],
            "ps": [f"127.0.0.1:{_free_port()}" for _ in range(ps)],
            "chief": [f"127.0.0.1:{_free_port()}"]}
    cluster = tf.train.ClusterSpec(spec)
    # Every server of the process shares its host: give each its own threads, or a few
    # cores' worth of default pools deadlock with several workers blocked on the ps.
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=8,
                                      intra_op_parallelism_threads=2)
    servers = [tf.distribute.Server(cluster, job_name=job, task_index=i, protocol="grpc",
                                    config=config, start=True)
               for job in ("worker", "ps") for i in range(len(spec[job]))]
    _local_cluster[key] = (cluster, servers)
  cluster, _ = _local_cluster[key]
  return tf.distribute.cluster_resolver.SimpleClusterResolver(
      cluster, rpc_layer="grpc", task_type="chief", task_id=0)


def serve_if_server_task(dist: DistributionConfig) -> bool:
  """parameter_server with TF_CONFIG: on a ``worker`` or ``ps`` task, runs its server
  until the job is killed and returns True; on the chief returns False."""
  if dist.strategy != "parameter_server" or dist.local_workers:
    return False
  conf = tf_config(dist)
  task = conf.get("task", {})
  if task.get("type") not in ("worker", "ps"):
    return False
  os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
  server = tf.distribute.Server(tf.train.ClusterSpec(conf["cluster"]), job_name=task["type"],
                                task_index=int(task.get("index", 0)),
                                protocol=conf.get("rpc_layer", "grpc"), start=True)
  logging.info("ssr_tf: %s %s serving at %s", task["type"], task.get("index", 0), server.target)
  server.join()
  return True


# ---------------------------------------------------------------------------------------
# Strategies.


def _cross_device_ops(name: str):
  return {"auto": None, "nccl": tf.distribute.NcclAllReduce(),
          "hierarchical_copy": tf.distribute.HierarchicalCopyAllReduce(),
          "reduce_to_one": tf.distribute.ReductionToOneDevice()}[name]


def mirrored_devices(dist: DistributionConfig) -> list[str]:
  """``devices``, else every GPU, else every logical CPU device."""
  if dist.devices:
    return list(dist.devices)
  gpus = tf.config.list_logical_devices("GPU")
  return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def make_strategy(dist: DistributionConfig) -> tf.distribute.Strategy:
  """Builds the configured strategy (call before any other TF work in the process:
  multi-worker collectives must be set up first)."""
  if dist.tf_config:
    os.environ["TF_CONFIG"] = dist.tf_config
  if dist.strategy == "default":
    return tf.distribute.get_strategy()
  if dist.strategy == "mirrored":
    return tf.distribute.MirroredStrategy(mirrored_devices(dist),
                                          cross_device_ops=_cross_device_ops(dist.cross_device_ops))
  if dist.strategy == "multi_worker_mirrored":
    if not tf_config(dist).get("cluster"):
      logging.warning("multi_worker_mirrored without TF_CONFIG: training as a single worker")
    impl = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
            "ring": tf.distribute.experimental.CommunicationImplementation.RING,
            "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL}[dist.communication]
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=impl))
  # parameter_server
  if dist.local_workers:
    resolver = local_cluster(dist.local_workers, dist.local_ps)
  else:
    conf = tf_config(dist)
    if not conf.get("cluster", {}).get("ps"):
      raise ConfigError("config key 'distribution.strategy': parameter_server needs a cluster "
                        "with 'ps' tasks in TF_CONFIG (or distribution.tf_config), or "
                        "distribution.local_workers for an in-process cluster")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  num_ps = len(resolver.cluster_spec().as_dict().get("ps", []))
  strategy = tf.distribute.experimental.ParameterServerStrategy(
      resolver, variable_partitioner=EmbeddingPartitioner.from_config(dist, num_ps))
  _ps_clusters[strategy] = resolver.cluster_spec().as_dict()
  return strategy


def is_parameter_server(strategy: tf.distribute.Strategy) -> bool:
  return isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)


def coordinator(strategy: tf.distribute.Strategy):
  """The strategy's ClusterCoordinator (one per strategy; Keras fit reuses it), or None."""
  if not is_parameter_server(strategy):
    return None
  return tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)


def task_info(strategy: tf.distribute.Strategy) -> tuple[str, int]:
  """(task type, task id) of this process; ("chief", 0) when not multi-worker."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return "chief", 0
  return resolver.task_type or "chief", int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the shared outputs (config, state, best checkpoint)."""
  if is_parameter_server(strategy):
    return True                          # the coordinator is the only process running train()
  task_type, task_id = task_info(strategy)
  if task_type == "chief":
    return True
  has_chief = bool(strategy.cluster_resolver.cluster_spec().as_dict().get("chief"))
  return task_type == "worker" and task_id == 0 and not has_chief


def worker_dir(path: str, strategy: tf.distribute.Strategy) -> str:
  """`path` on the chief; a private temporary folder beside it on other workers (which
  must still save, since reading synchronised variables takes all of them)."""
  if is_chief(strategy):
    return path
  task_type, task_id = task_info(strategy)
  return os.path.join(os.path.dirname(path.rstrip("/")),
                      f".{task_type}_{task_id}_tmp", os.path.basename(path.rstrip("/")))


# ---------------------------------------------------------------------------------------
# Embedding partitioning (parameter_server).


@contextlib.contextmanager
def variable_names() -> Iterator[None]:
  """Makes the name of each variable being created visible to :class:`EmbeddingPartitioner`
  (a strategy's partitioner sees only shape and dtype)."""
  def creator(next_creator, **kwargs):
    previous = getattr(_naming, "name", None)
    _naming.name = kwargs.get("name")
    try:
      return next_creator(**kwargs)
    finally:
      _naming.name = previous
  with tf.variable_creator_scope(creator):
    yield


def matches(pattern: str, name: str) -> bool:
  """Whether `pattern` matches any '/'-separated part of a variable name (':0' dropped)."""
  parts = str(name).split(":")[0].split("/")
  return any(re.search(pattern, p) for p in parts)


class EmbeddingPartitioner:
  """Splits the variables whose name matches `pattern` with `base` (a
  ``tf.distribute.experimental.partitioners`` partitioner); other variables stay whole
  and are placed round-robin on the parameter servers.

  Args:
    base: the partitioner of the embedding tables (None: no partitioning).
    pattern: regular expression matched against each part of the variable name.
  """

  def __init__(self, base, pattern: str):
    self.base = base
    self.pattern = pattern
    self.decisions: dict[str, list[int]] = {}

  @classmethod
  def from_config(cls, dist: DistributionConfig, num_ps: int) -> "EmbeddingPartitioner":
    parts = tf.distribute.experimental.partitioners
    if dist.partitioner == "min_size":
      base = parts.MinSizePartitioner(min_shard_bytes=dist.min_shard_bytes,
                                      max_shards=dist.max_shards or max(num_ps, 1))
    elif dist.partitioner == "fixed":
      base = parts.FixedShardsPartitioner(num_shards=dist.num_shards or max(num_ps, 1))
    else:
      base = None
    return cls(base, dist.embedding_pattern)

  def __call__(self, shape: tf.TensorShape, dtype: tf.dtypes.DType, axis: int = 0) -> list[int]:
    name = getattr(_naming, "name", None) or ""
    shape = tf.TensorShape(shape)
    if self.base is None or not name or not matches(self.pattern, name) or shape.rank == 0:
      out = [1] * max(shape.rank or 0, 1)
    else:
      out = [int(n) for n in self.base(shape, dtype)]
      out[0] = min(out[0], int(shape[0]))            # never more shards than rows
    self.decisions[name] = out
    return out


def shard_report(model: tf.keras.Model) -> dict[str, dict]:
  """Per embedding table: number of shards, rows per shard and their devices."""
  out = {}
  tables = getattr(getattr(model, "embedding", None), "tables", {}) or {}
  for feature, var in tables.items():
    parts = list(getattr(var, "variables", [var]))
    out[feature] = {"shards": len(parts), "rows": [int(p.shape[0]) for p in parts],
                    "devices": [p.device for p in parts]}
  return out


# ---------------------------------------------------------------------------------------
# Batch size (the learning rate it scales: ssr_tf/schedules.py).


def global_batch_size(dist: DistributionConfig, data_batch: int, replicas: int) -> int:
  """The global batch: per_replica_batch_size x replicas, or data.batch_size (which must
  split evenly across the replicas)."""
  if dist.per_replica_batch_size:
    return dist.per_replica_batch_size * replicas
  if data_batch % replicas:
    raise ConfigError(f"config key 'data.batch_size': the global batch {data_batch} does not "
                      f"split evenly across {replicas} replicas; use a multiple of {replicas} "
                      "or set distribution.per_replica_batch_size")
  return data_batch


# ---------------------------------------------------------------------------------------
# Gradient aggregation.


class DistributedGradients:
  """Optimizer mixin: replica-mean gradient all-reduce that keeps embedding gradients sparse.

  Keras optimizers all-reduce with SUM, which is right for losses already divided by the
  number of replicas; the ranker's losses are per-replica batch means, so the sum is
  divided by ``num_replicas_in_sync`` here (``tf.IndexedSlices`` stay sparse: only their
  values are divided). At trace time the gradient of every variable matching
  `sparse_pattern` is checked: a dense one means the whole table would be all-reduced
  each step, which ``sparse_mode`` "require" turns into an error and "warn" into a warning.
  ``sparse_report`` records what was seen ({variable: "IndexedSlices" | "dense"}).
  """

  sparse_pattern: str = "^emb_"
  sparse_mode: str = "require"

  def aggregate_gradients(self, grads_and_vars):
    """Keras 2.11+ optimizers' aggregation hook."""
    return self._replica_mean(grads_and_vars, super().aggregate_gradients)

  def _aggregate_gradients(self, grads_and_vars):
    """OptimizerV2's aggregation hook (the optimizers of ssr_tf.optimizers)."""
    return self._replica_mean(grads_and_vars, super()._aggregate_gradients)

  def _replica_mean(self, grads_and_vars, all_reduce_sum):
    grads_and_vars = list(grads_and_vars)
    self._check_sparse(grads_and_vars, "before")
    reduced = all_reduce_sum(grads_and_vars)
    self._check_sparse(reduced, "after")
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas == 1:
      return reduced
    out = []
    for g, v in reduced:
      if isinstance(g, tf.IndexedSlices):
        g = tf.IndexedSlices(g.values / replicas, g.indices, g.dense_shape)
      elif g is not None:
        g = g / replicas
      out.append((g, v))
    return out

  def _check_sparse(self, grads_and_vars, stage: str) -> None:
    if self.sparse_mode == "off":
      return
    if not hasattr(self, "sparse_report"):
      self.sparse_report = {}
    for g, v in grads_and_vars:
      if g is None or not matches(self.sparse_pattern, v.name):
        continue
      kind = "IndexedSlices" if isinstance(g, tf.IndexedSlices) else "dense"
      self.sparse_report[f"{v.name}@{stage}"] = kind
      if kind == "dense":
        msg = (f"the gradient of embedding table {v.name} {list(v.shape)} is dense "
               f"{stage} the cross-replica all-reduce: every step would all-reduce the "
               "whole table. Look up tables with tf.nn.embedding_lookup / tf.gather only, "
               "or set distribution.sparse_gradients (require|warn|off)")
        if self.sparse_mode == "require":
          raise ValueError(msg)
        logging.warning(msg)


def distributed_optimizer(optimizer_cls: type, dist: DistributionConfig, **kwargs):
  """An instance of `optimizer_cls` with :class:`DistributedGradients` mixed in."""
  cls = type(f"Distributed{optimizer_cls.__name__}", (DistributedGradients, optimizer_cls),
             {"sparse_pattern": dist.embedding_pattern, "sparse_mode": dist.sparse_gradients})
  return cls(**kwargs)


def describe(strategy: tf.distribute.Strategy) -> dict:
  """Strategy name, replica count, task and (parameter_server) cluster size."""
  task_type, task_id = task_info(strategy)
  out = {"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
         "task": f"{task_type}:{task_id}"}
  try:
    out["devices"] = list(strategy.extended.worker_devices)
  except (RuntimeError, AttributeError, NotImplementedError):
    pass                                   # the default strategy has no device list
  if is_parameter_server(strategy):
    spec = _ps_clusters.get(strategy, {})
    out["workers"] = len(spec.get("worker", []))
    out["ps"] = len(spec.get("ps", []))
  return out


def input_options() -> tf.distribute.InputOptions:
  """Options for distribute_datasets_from_function: prefetch to the replica devices."""
  return tf.distribute.InputOptions(experimental_fetch_to_device=True)

