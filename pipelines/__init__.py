"""Data pipelines, in two halves and the media code they share:

- `offline/`: a raw corpus -> WebDataset shards, index files, quarantine report;
- `online/`: shards -> training and evaluation batches (samplers, loaders, Ray Data ingest, transforms);
- `media/`: decoding and preparing images and videos, the same for sharding, training and prediction.

The commands (`shard.py`, `demo_shards.py`, `demo_corpus.py`, `demo_video.py`, `sample.py`, `color_pca.py`)
sit at the top; what training and tuning share with them is the `common` package.
"""
