"""Integrations with model libraries (imported on demand: `aot_kernels.integrations.transformers`)."""
