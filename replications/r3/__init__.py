"""R3 (Xi et al. 2024): reverse curriculum RL from outcome rewards, start states slid back along demonstrations."""
