"""model_export."""
