"""Model resolution, the embedded default model and the bundle format."""
