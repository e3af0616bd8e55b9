"""What a cache is on disk: the feature spec, codecs, index, manifest, storage and the LM head file."""
