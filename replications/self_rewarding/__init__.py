"""Self-Rewarding Language Models (Yuan et al. 2024, arXiv 2401.10020) on the shared harness."""
