"""Stage 2, the teacher cache: the storage format (memory-mapped, checksummed shards) and the capture pass
that turns one teacher forward into every arm's targets, cached or online."""
