"""The one batched prediction engine: sources -> decode pool -> fixed-size batches -> backend -> sinks."""
