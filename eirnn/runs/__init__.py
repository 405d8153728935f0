"""From a config to the objects of a run: data module, model, LightningModule, checkpoints."""
