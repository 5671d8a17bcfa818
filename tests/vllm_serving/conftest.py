import os

# One process: the engine runs in the test process, so the tests reach the model (apply_model
# returns live objects) and no child process re-imports the test module. (`make test-vllm` sets
# OMP_NUM_THREADS; nothing here changes the environment of other tests' subprocesses otherwise.)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
