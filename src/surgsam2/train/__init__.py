"""Fine-tuning: data pipeline, prompt simulation, losses, trainer."""
