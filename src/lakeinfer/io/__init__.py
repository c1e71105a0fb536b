"""Sources and sinks: where batches come from and where predictions go."""
