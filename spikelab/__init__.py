"""spikelab: the shared logic of the pipeline's stages (see README.md and dvc.yaml)."""
