"""preprocessing: raw VGAF-style clips -> the GEMS TFDS dataset (the PyTorch stage of gems_jax).

    python -m preprocessing.build --videos DIR --annotations FILE [--descriptions FILE_OR_DIR] \
        --data_dir OUT                                   # or --from_features ROOT
    python -m preprocessing.extract --video F [--description TEXT] \
        --extract_config CONFIG.json --out F.npz     # one clip, as a dataset's build did it

Modules, in the order data flows through them:
  video.py            PyAV decoding, T sampled frames (uniform or n per second), detection view
  audio.py            the first audio stream -> int16 mono 16 kHz, aligned with the sampled frames
  frames.py           T_v whole frames, squashed or letterboxed to H x W, JPEG
  faces.py            MTCNN (facenet-pytorch, bundled weights), top-K selection, square JPEG crops
  tracking.py         IoU tracker: stable track ids across sampled steps
  extract.py          one clip -> faces, whole frames, audio of an example; extract_config (+ CLI)
  text.py             descriptions -> (scene, background, event) -> pooled transformer embeddings
  labels.py           labels.json, annotation CSVs (ours and the authors'), split-leak check
  individual.py       per-frame individual annotations attached to detected faces
  features_import.py  the authors' precomputed-feature layout
  report.py           build_report.json
  workers.py          killable worker processes: a clip that hangs or crashes costs only itself
  pipeline.py         the build stages (text, media in worker processes, validate + write)
  build.py            the dataset CLI
  beam_build.py, beam_transforms.py  the same build as Apache Beam jobs (build.py --runner ...)
  random_text_encoder.py  a random RoBERTa + on-the-fly tokenizer for offline tests and benchmarks
  make_synthetic.py, synthetic/  the synthetic VGAF-GEMS-format data generator (raw inputs above)
The dataset schema, the per-clip npz codec (caches, extract output) and the writer are
gems_jax.data.spec, gems_jax.data.npz_records and gems_jax.data.tfds_writer: this package imports
them (the contract), gems_jax never imports this package.
"""
