"""What the data pipelines, training and tuning share: the console (`console`), files and URIs
(`storage`), YAML settings files (`settings_file`), argument types (`arguments`), content hashes
(`hashing`), what the Ray cluster holds (`cluster_shape`) and whether local paths are shared by its
nodes (`shared_paths`)."""
