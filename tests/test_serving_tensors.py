"""Request validation (serving/tensors.py) without a server."""
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from ssr_tf.serving.tensors import InputSpec, ServingError, check_feeds


def test_feed_validation_names_the_same_input_whatever_the_signature_order():
  """A SignatureDef's inputs come from a protobuf map whose order can differ between
  processes; the error for one request must not (it once flipped between runs)."""
  specs = {n: InputSpec(n, f"{n}:0", types_pb2.DT_INT64, [-1]) for n in ("a", "b", "c")}
  feeds = {"a": np.zeros(1, np.int64), "b": np.zeros(2, np.int64), "c": np.zeros(1, np.int64),
           "x": np.zeros(1, np.int64), "w": np.zeros(1, np.int64)}
  messages = set()
  for order in (("a", "b", "c"), ("c", "b", "a"), ("b", "c", "a")):
    for drop in ((), ("x", "w")):
      with pytest.raises(ServingError) as info:
        check_feeds("sig", {n: specs[n] for n in order},
                    {k: v for k, v in feeds.items() if k not in drop}, max_rows=10)
      messages.add((drop, info.value.message))
  assert sorted(m for _, m in messages) == [
      "input 'b': batch size 2 differs from input 'a' (1)",
      "input 'w' is not an input of signature 'sig'; it takes ['a', 'b', 'c']"]
