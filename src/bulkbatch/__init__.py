"""bulkbatch."""
