"""Lightning training: the LightningModule, DataModules and the ``fit`` / ``validate`` CLI."""
