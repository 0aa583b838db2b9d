"""Data pipelines, in two halves and the media code they share:

- `offline/`: a raw corpus -> WebDataset shards, index files, quarantine report;
- `online/`: shards -> training and evaluation batches (samplers, loaders, Ray Data ingest, transforms);
- `media/`: decoding and preparing images and videos, the same for sharding, training and prediction.

The commands (`shard.py`, `demo.py`, `demo_corpus.py`, `sample.py`, `color_pca.py`) and what every
part uses (`storage`, `console`, `settings_file`, `arguments`, `hashing`) sit at the top.
"""
