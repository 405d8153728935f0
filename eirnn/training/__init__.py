"""Training: the LightningModule (the step), the gradient balancer, the objective, callbacks."""
