import os

# One process: the engine runs in the test process, so the tests reach the model (apply_model
# returns live objects) and no child process re-imports the test module.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("OMP_NUM_THREADS", "2")
