"""The online half: shards into training and evaluation batches.  Samples are fetched by byte range
(`catalog`, `class_offsets`, `tar_stream`), ordered as pure functions of the seed (`epoch_order` for
uniform epochs, `wm_sequence` for class-aware ones), streamed per consumer (`streams`), batched in the
training worker (`loader`) or by Ray Data across the cluster (`ingest_pipeline`, `ingest_worker`), and augmented
(`transforms`)."""
