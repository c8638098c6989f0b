"""The ranking model: raw features -> field embeddings -> backbone -> click and pay heads.

p_click = sigmoid(w_c . h_click);  independent: p_pay = sigmoid(w_p . h_pay);
esmm: p_pay = p_click * sigmoid(w_v . h_pay). Pay is trained on the full sample space.
A click-only data set (spec labels without pay, e.g. every Criteo conversion) gets no pay
head, loss or metrics, and the model outputs click_prob alone.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from ssr_tf import optimizers
from ssr_tf.config import TASKS, ModelConfig
from ssr_tf.features import FeatureSpec
from ssr_tf.layers.embedding import FeatureEmbedding
from ssr_tf.models import registry


class RankingModel(tf.keras.Model):
  """Multi-task ranker with a pluggable backbone (``model.name``).

  ``call`` returns ``{"click_prob": [batch], "pay_prob": [batch]}`` (``pay_prob`` only when
  the spec has a pay label); training uses the logits for numerically stable losses.
  """

  def __init__(self, spec: FeatureSpec, model_cfg: ModelConfig, seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.spec = spec
    self.model_cfg = model_cfg
    self.pay_mode = model_cfg.pay_mode
    self.has_pay = spec.has_pay()
    self.tasks = TASKS if self.has_pay else ("click",)
    self.loss_weights = {t: float(model_cfg.loss_weights.get(t, 1.0)) for t in self.tasks}
    self.embedding = FeatureEmbedding(spec, model_cfg.embedding_dim, model_cfg.embedding_l2,
                                      name="embedding")
    self.backbone = registry.build_backbone(model_cfg, len(spec.features), self.tasks,
                                           seed=seed)
    self.click_head = tf.keras.layers.Dense(1, name="click_head")
    self.pay_head = tf.keras.layers.Dense(1, name="pay_head") if self.has_pay else None
    self.loss_trackers = {k: tf.keras.metrics.Mean(name=k)
                          for k in ("loss", *(f"{t}_loss" for t in self.tasks))}
    self.auc_metrics = {t: tf.keras.metrics.AUC(num_thresholds=2000, name=f"{t}_auc")
                        for t in self.tasks}

  def logits(self, inputs: dict, training=None) -> dict:
    """{'click': [batch], 'pay': [batch]} (no 'pay' without a pay label); pay is the CVR
    logit in esmm mode."""
    fields = self.embedding(inputs, training=training)      # [batch, F, dim]
    h = self.backbone(fields, training=training)
    if not isinstance(h, dict):
      h = {t: h for t in self.tasks}
    out = {"click": tf.squeeze(self.click_head(h["click"]), -1)}
    if self.has_pay:
      out["pay"] = tf.squeeze(self.pay_head(h["pay"]), -1)
    return out

  def probabilities(self, logits: dict) -> dict:
    p_click = tf.sigmoid(logits["click"])
    if "pay" not in logits:
      return {"click_prob": p_click}
    p_pay = tf.sigmoid(logits["pay"])
    if self.pay_mode == "esmm":
      p_pay = p_click * p_pay
    return {"click_prob": p_click, "pay_prob": p_pay}

  def call(self, inputs, training=None):
    return self.probabilities(self.logits(inputs, training=training))

  def task_losses(self, labels: dict, logits: dict) -> dict:
    """Mean binary cross-entropy per task, from logits."""
    y_click = tf.cast(labels["click"], tf.float32)
    losses = {"click": tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=y_click, logits=logits["click"]))}
    if self.has_pay:
      y_pay = tf.cast(labels["pay"], tf.float32)
      if self.pay_mode == "esmm":
        log_p = tf.math.log_sigmoid(logits["click"]) + tf.math.log_sigmoid(logits["pay"])
        log_p = tf.minimum(log_p, -1e-7)
        log_not_p = tf.math.log(-tf.math.expm1(log_p))
        losses["pay"] = -tf.reduce_mean(y_pay * log_p + (1 - y_pay) * log_not_p)
      else:
        losses["pay"] = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=y_pay, logits=logits["pay"]))
    return losses

  def _step(self, data, training: bool):
    features, labels = data[0], data[1]
    logits = self.logits(features, training=training)
    losses = self.task_losses(labels, logits)
    total = tf.add_n([self.loss_weights[t] * l for t, l in losses.items()])
    if self.losses:
      total += tf.add_n(self.losses)
    return logits, losses, total

  def _update_metrics(self, labels, logits, losses, total):
    probs = self.probabilities(logits)
    self.loss_trackers["loss"].update_state(total)
    for t, l in losses.items():
      self.loss_trackers[f"{t}_loss"].update_state(l)
      self.auc_metrics[t].update_state(labels[t], probs[f"{t}_prob"])
    return {m.name: m.result() for m in self.metrics}

  def train_step(self, data):
    with tf.GradientTape() as tape:
      logits, losses, total = self._step(data, training=True)
      scaled = self.optimizer.get_scaled_loss(total) if hasattr(
          self.optimizer, "get_scaled_loss") else total
    grads = tape.gradient(scaled, self.trainable_variables)
    if hasattr(self.optimizer, "get_unscaled_gradients"):
      grads = self.optimizer.get_unscaled_gradients(grads)
    for table, rows in self.embedding.reassigned.values():   # dynamic-id rows with new owners
      optimizers.reset_rows(self.optimizer, table, rows)
    self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
    return self._update_metrics(data[1], logits, losses, total)

  def test_step(self, data):
    logits, losses, total = self._step(data, training=False)
    return self._update_metrics(data[1], logits, losses, total)

  def predict_step(self, data):
    features = data[0] if isinstance(data, tuple) else data
    return self(features, training=False)

  def get_config(self):
    import dataclasses  # pylint: disable=import-outside-toplevel
    return {"spec": dataclasses.asdict(self.spec), "model_cfg": dataclasses.asdict(self.model_cfg)}

  @property
  def metrics(self):
    """Losses and AUCs per task, then what layers report through ``add_metric`` (e.g.
    the memory layers' slot usage), so Keras logs and resets them all."""
    own = ([self.loss_trackers["loss"]] + [self.loss_trackers[f"{t}_loss"] for t in self.tasks]
           + [self.auc_metrics[t] for t in self.tasks])
    seen = {id(m) for m in [*self.loss_trackers.values(), *self.auc_metrics.values()]}
    added = [m for layer in self._flatten_layers() for m in layer._metrics  # pylint: disable=protected-access
             if id(m) not in seen]
    return own + added


def build_model(spec: FeatureSpec, model_cfg: ModelConfig, seed: int = 0) -> RankingModel:
  """Builds the model and creates its variables with a dummy batch; `seed` (the run's
  train.seed) seeds the backbone's own initialisers where its config leaves `seed` null."""
  model = RankingModel(spec, model_cfg, seed=seed, name=f"ranker_{model_cfg.name}")
  model(dummy_batch(spec), training=False)
  return model


def dummy_batch(spec: FeatureSpec, batch: int = 2) -> dict:
  out = {}
  for f in spec.features:
    shape = [batch, *spec.value_shape(f)]
    if f.dtype == "string":
      out[f.name] = tf.fill(shape, "")
    elif f.dtype == "int64":
      out[f.name] = tf.zeros(shape, tf.int64)
    else:
      out[f.name] = tf.zeros(shape, tf.float32)
  return out


def backbone_params(model: RankingModel) -> int:
  """Trainable parameters of the backbone only (the paper excludes embedding tables)."""
  return int(sum(np.prod(v.shape) for v in model.backbone.trainable_variables))


def backbone_flops(model: RankingModel) -> int:
  """FLOPs per example of one inference pass of the backbone (multiply-add = 2).

  Backbones define ``flops_per_example(num_fields, embedding_dim)``; a backbone without it
  is estimated as 2 x its parameter count (exact for pure matmul stacks).
  """
  bb = model.backbone
  if hasattr(bb, "flops_per_example"):
    return int(bb.flops_per_example(len(model.spec.features), model.model_cfg.embedding_dim))
  return 2 * backbone_params(model)
