"""The revisions, oldest first: 0001 is the schema the store had before migrations existed."""
