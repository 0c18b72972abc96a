"""A folder of the user's own images as a searchable collection: the folder walk and each
file's identity (`files`), the index store with its resumable shards (`store`), near-duplicate
groups and their calibrated threshold (`duplicates`)."""
