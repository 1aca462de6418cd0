"""What a job does: the work the job lane runs, one small module per concern."""
