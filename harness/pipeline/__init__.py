"""The steps every paper shares: an experiment (problems, model, prompts, store) and the loop for papers whose policy changes."""
