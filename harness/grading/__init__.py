"""Is an answer right: answer extraction, the process-pool grader with timeouts, graded samples cached beside the store, the lm-eval baseline."""
