"""Moving bytes: file mappings, the threaded raw fill, SIGBUS handling, reproducible zip entries."""
