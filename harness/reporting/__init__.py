"""What a run leaves behind: the run directory (config, provenance, ledger), reports, claims, plots and the published numbers beside ours."""
