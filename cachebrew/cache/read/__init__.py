"""The read side: shards, chunks, checksums, the epoch order and the chunk-aligned epoch reader."""
