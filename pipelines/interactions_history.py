"""Behaviour histories of `ssr_tf data convert --format interactions`: per-user state and
the encoding of the history features.

All events of one time value are emitted before any of them enters a history (events with
equal times never see each other); with ``positives_only`` only positive events enter.
Memory: users x length items.
"""
from __future__ import annotations

import collections
import datetime as dt
from typing import Any

from ssr_tf.pipelines import interactions_mapping as im
from ssr_tf.pipelines import transforms
from ssr_tf.pipelines.interactions_events import Event, Setup


class Histories:
  """Per user, the last `length` history items, most recent first."""

  def __init__(self, st: Setup):
    h = st.mapping.history
    self.length = h.length if h else 0
    self.positives_only = h.positives_only if h else True
    self.state: dict[Any, collections.deque] = {}
    self.items = st.items
    self.sides = st.hist_sides
    fields = st.item_fields
    self.missing = [im.missing_value(fields[k]) if K == 0 else
                    (-1 if fields[k].dtype == "int64" else "") for k, K in self.sides]
    self.no_side = tuple(im.missing_value(f) for f in fields)

  def of(self, user: Any) -> list:
    d = self.state.get(user)
    return list(d) if d else []

  def add(self, group: list[Event]) -> None:
    if not self.length:
      return
    for _, user, item, label in group:
      if self.positives_only and label != 1.0:
        continue
      d = self.state.get(user)
      if d is None:
        d = self.state[user] = collections.deque(maxlen=self.length)
      d.appendleft(item)


class HistoryEncoder:
  """The serialized tf.Example map entries of the history features.

  Each item's contribution to every history feature (its id; per side feature its value,
  or its values truncated / padded to K with the missing value) is encoded once and
  cached (one entry per item), so a record costs a join of cached bytes per feature.
  Entries use ExampleEncoder's wire format: int64 values packed, strings as a BytesList.
  """

  def __init__(self, st: Setup, hist: Histories):
    self.names = [f.name for f in st.hist_fields]
    self.heads = [b"\x0a" + transforms._vlen(len(n.encode())) + n.encode() + b"\x12"  # pylint: disable=protected-access
                  for n in self.names]
    self.ints = [f.dtype == "int64" for f in st.hist_fields]
    self.items, self.sides, self.no_side = st.items, hist.sides, hist.no_side
    self.missing = hist.missing
    self.cache: dict[Any, tuple[bytes, ...]] = {}

  def values(self, item: Any) -> list[list]:
    """Per history feature, the values `item` contributes."""
    row = self.items.get(item, self.no_side)
    out = [[item]]
    for (k, K), miss in zip(self.sides, self.missing):
      if K == 0:
        out.append([row[k]])
      else:
        v = list(row[k][:K])
        out.append(v + [miss] * (K - len(v)))
    return out

  def _chunks(self, item: Any) -> tuple[bytes, ...]:
    out = []
    for vs, is_int in zip(self.values(item), self.ints):
      if is_int:
        out.append(b"".join(transforms.varint(v) for v in vs))
      else:
        out.append(b"".join(transforms._ld(b"\x0a", v.encode()) for v in vs))  # pylint: disable=protected-access
    chunks = self.cache[item] = tuple(out)
    return chunks

  def encode(self, hist: list) -> bytes:
    """Map entries of the history features of one record (`hist`: items, latest first)."""
    get, make = self.cache.get, self._chunks
    rows = [get(x) or make(x) for x in hist]
    ld = transforms._ld  # pylint: disable=protected-access
    out = []
    for j, (head, is_int) in enumerate(zip(self.heads, self.ints)):
      payload = b"".join([r[j] for r in rows])
      if is_int:
        feature = ld(b"\x1a", ld(b"\x0a", payload) if rows else b"")
      else:
        feature = ld(b"\x0a", payload)
      out.append(ld(b"\x0a", head + transforms._vlen(len(feature)) + feature))  # pylint: disable=protected-access
    return b"".join(out)


def with_entries(record: bytes, entries: bytes) -> bytes:
  """tf.Example `record` (serialized) with more map entries appended."""
  i = 1
  while record[i] & 0x80:             # the varint length after the Example's field tag
    i += 1
  return transforms._ld(b"\x0a", record[i + 1:] + entries)  # pylint: disable=protected-access


def time_parts(t: float) -> dict[str, int]:
  x = dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)
  return {"hour": x.hour, "weekday": x.weekday()}
