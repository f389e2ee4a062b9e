"""Stage 2c's server: the InferenceScalingEngine deployment, request parsing, streaming, app building, phase2 serve."""
