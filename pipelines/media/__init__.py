"""Media decoding shared by both halves: what sharding writes and what training and prediction read go
through the same code (`images` for pictures, `video` for video files through PyAV)."""
