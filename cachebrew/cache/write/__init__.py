"""The write side: examples prepared, shards written whole and published by rename, ownership of the output."""
