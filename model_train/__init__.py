"""model_train."""
