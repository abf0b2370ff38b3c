"""What each method exports: a module, a TrainingSpec and real batches, handed to exporters.export."""
