"""grain input pipeline: sharding with padding, determinism, resumable state, padding content."""
import math

import numpy as np
import pytest

from gems_jax.data import input_pipeline, planted, tfds_writer
from gems_jax.data import spec as spec_lib

NUM_TRAIN = 23  # Prime: no shard count or batch size here divides it.


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  spec = planted.planted_spec(num_frames=4, max_faces=2, text_dim=4, embed_dim=4)
  splits = {"train": planted.make_planted_examples(spec, NUM_TRAIN, seed=0),
            "val": planted.make_planted_examples(spec, 5, seed=1)}
  return tfds_writer.write_dataset(tmp_path_factory.mktemp("pipeline"), spec, splits), splits


def _clips(batches):
  """Clip ids of the valid examples, in order."""
  return [c for b in batches for c, ok in zip(b["clip_id"], b["valid"]) if ok]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("shard_count", [2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_eval_shards_are_disjoint_complete_and_equally_long(dataset, shard_count, shuffle):
  path, splits = dataset
  all_clips = [e["clip_id"] for e in splits["train"]]
  shards = [list(input_pipeline.make_iterator(
      path, "train", batch_size=4, shuffle=shuffle, seed=1, num_epochs=1, shard_index=s,
      shard_count=shard_count)) for s in range(shard_count)]
  expected_batches = math.ceil(math.ceil(NUM_TRAIN / shard_count) / 4)
  assert [len(s) for s in shards] == [expected_batches] * shard_count
  per_shard = [_clips(s) for s in shards]
  assert sorted(sum(per_shard, [])) == sorted(all_clips)  # Union = all, nothing twice.
  if not shuffle:  # Interleaved: shard s holds examples s, s + n, ...
    assert per_shard[1] == all_clips[1::shard_count]
  for shard in shards:
    assert all(b["valid"].shape == (4,) for b in shard)
    assert not shard[-1]["face_mask"][~shard[-1]["valid"]].any()


def test_partial_last_batch_is_padding(dataset):
  path, splits = dataset
  batches = list(input_pipeline.iterate_split_once(path, "val", batch_size=4))
  assert [b["valid"].tolist() for b in batches] == [[True] * 4, [True, False, False, False]]
  assert _clips(batches) == [e["clip_id"] for e in splits["val"]]
  last = batches[-1]
  padding = spec_lib.padding_example(input_pipeline.load_spec(path))
  for key, value in padding.items():
    np.testing.assert_array_equal(last[key][1:], np.stack([value] * 3), err_msg=key)
  assert last["group_emotion"].tolist() == [splits["val"][4]["group_emotion"], 0, 0, 0]
  assert np.isnan(last["individual_valence"][1:]).all()
  assert (last["individual_emotion"][1:] == -1).all() and not last["step_mask"][1:].any()


def test_training_stream_is_deterministic_epoch_aligned_and_reshuffled_per_epoch(dataset):
  path, splits = dataset
  make = lambda seed, shard: input_pipeline.make_iterator(  # noqa: E731
      path, "train", batch_size=5, shuffle=True, seed=seed, num_epochs=None, shard_index=shard,
      shard_count=2)
  streams = [_take(make(0, shard), 12) for shard in (0, 1)]  # 4 epochs of 3 batches per shard.
  # Shares of 12 and 11 examples: the last batch of each epoch is 2 and 1 examples, then padding.
  assert [int(b["valid"].sum()) for b in streams[0][:3]] == [5, 5, 2]
  assert [int(b["valid"].sum()) for b in streams[1][:3]] == [5, 5, 1]
  epochs = [(_clips(streams[0][3 * e:3 * e + 3]), _clips(streams[1][3 * e:3 * e + 3]))
            for e in range(4)]
  for first, second in epochs:  # Every epoch: a fresh global permutation split over the shards.
    assert sorted(first + second) == sorted(e["clip_id"] for e in splits["train"])
  assert epochs[0][0] != epochs[1][0]
  _assert_batches_equal(streams[0], _take(make(0, 0), 12))
  assert _clips(_take(make(1, 0), 2)) != _clips(streams[0][:2])


@pytest.mark.parametrize("num_records,shard_count,batch_size", [
    (23, 2, 5), (10, 3, 2), (7, 4, 1), (9, 2, 8), (16, 4, 4), (5, 5, 3)])
def test_global_batches_hold_distinct_clips_and_every_shard_runs_the_same_steps(
    num_records, shard_count, batch_size):
  """Multi-host training input: N need not divide over the processes. Every global batch (batch k of
  every shard) holds distinct examples, every epoch shows each example once, and all shards run
  the same number of batches per epoch."""
  plans = [input_pipeline.ShardPlan(num_records, batch_size, s, shard_count, shuffle=True, seed=3,
                                    num_epochs=None) for s in range(shard_count)]
  per_epoch = {p.batches_per_epoch for p in plans}
  assert per_epoch == {math.ceil(num_records / (shard_count * batch_size))}
  steps = per_epoch.pop()
  for epoch in range(3):
    seen = []
    for k in range(epoch * steps, (epoch + 1) * steps):
      rows = np.concatenate([p.batch_indices(k) for p in plans])
      rows = rows[rows >= 0]
      assert len(set(rows.tolist())) == len(rows), (k, rows)
      seen += rows.tolist()
    assert sorted(seen) == list(range(num_records)), epoch


def test_state_restore_gives_identical_batches(dataset):
  path, _ = dataset
  kwargs = dict(batch_size=3, shuffle=True, seed=7, num_epochs=None)
  iterator = input_pipeline.make_iterator(path, "train", **kwargs)
  _take(iterator, 9)  # Crosses an epoch boundary.
  state = iterator.get_state()
  expected = _take(iterator, 6)
  resumed = input_pipeline.make_iterator(path, "train", **kwargs)
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 6), expected)

  finite = input_pipeline.iterate_split_once(path, "train", batch_size=4)
  _take(finite, 2)
  state, rest = finite.get_state(), list(finite)
  again = input_pipeline.iterate_split_once(path, "train", batch_size=4)
  again.set_state(state)
  _assert_batches_equal(list(again), rest)


def test_worker_processes_give_the_same_batches(dataset):
  path, _ = dataset
  kwargs = dict(batch_size=4, shuffle=True, seed=3, num_epochs=2, shard_index=1, shard_count=2)
  expected = list(input_pipeline.make_iterator(path, "train", **kwargs))
  iterator = input_pipeline.make_iterator(path, "train", worker_count=2, **kwargs)
  _assert_batches_equal(list(iterator), expected)
  iterator.close()


def test_shard_plan_and_errors(dataset):
  path, _ = dataset
  plan = input_pipeline.ShardPlan(num_records=7, batch_size=2, shard_index=2, shard_count=3)
  assert plan.per_epoch == 2 and plan.num_batches == 2
  assert plan.batch_indices(0).tolist() == [2, 5] and plan.batch_indices(1).tolist() == [-1, -1]
  with pytest.raises(ValueError, match="shard_count"):
    input_pipeline.ShardPlan(num_records=2, batch_size=1, shard_count=3, num_epochs=None)
  with pytest.raises(ValueError, match="shard_index"):
    input_pipeline.ShardPlan(num_records=9, batch_size=1, shard_index=3, shard_count=3)
  with pytest.raises(ValueError, match="'nope'.*available"):
    input_pipeline.make_iterator(path, "nope", batch_size=2, shuffle=False, seed=0,
                                 num_epochs=1)
  with pytest.raises(FileNotFoundError, match="gems_meta.json"):
    input_pipeline.load_spec(path / "missing")
