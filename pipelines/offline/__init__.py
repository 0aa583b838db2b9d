"""The offline half: a raw corpus (list files, class folders, attribute tables; local or s3://) into
WebDataset shards, their index files and the quarantine report.  `pipelines/shard.py` is its command."""
