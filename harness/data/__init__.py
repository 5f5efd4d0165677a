"""Where problems come from: dataset files (GSM8K, MATH, MATH500, SVAMP, the ladder) as `Problem` records, and the prompts that render them."""
