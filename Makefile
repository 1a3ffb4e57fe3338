# filtertron: `make demo` and `make test` do all set-up on a fresh machine.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
CACHE   := $(CURDIR)/.cache
# First-use compiles (DeepSpeed CPU ops, torch.compile) are cached here so they are paid once.
export TORCH_EXTENSIONS_DIR   := $(CACHE)/torch_extensions
export TORCHINDUCTOR_CACHE_DIR := $(CACHE)/inductor
export TRITON_CACHE_DIR        := $(CACHE)/triton
export MPLCONFIGDIR            := $(CACHE)/matplotlib
export HF_DATASETS_CACHE       := $(CACHE)/hf_datasets

.PHONY: install system-deps demo test test-slow triton-gate-3.6 lint bench clean

$(VENV)/.installed: setup.py
	$(MAKE) system-deps
	$(PY) -m venv $(VENV)
	# torch first: pinned CPU build (a plain `torch` could pull a multi-GB CUDA build).
	$(VPY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(VPY) -m pip install -q -e '.[dev,mpi,triton,hf]'
	touch $@

install: $(VENV)/.installed

# mpi4py needs a system MPI; numactl is used by deepspeed --bind_cores_to_rank.
system-deps:
	@if ! command -v mpicc >/dev/null 2>&1 || ! command -v numactl >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq libopenmpi-dev openmpi-bin numactl libaio-dev) >/dev/null; \
	  else echo "please install an MPI (libopenmpi-dev openmpi-bin) and numactl"; exit 1; fi; \
	fi

# The default tests include the Triton compile gate (tests/kernels/test_compile_gate.py) with the
# installed Triton; triton-gate-3.6 repeats it with Triton 3.6.0 (torch 2.11's, the GPU machine's
# stack), installed into a side folder so the environment stays untouched. .ci/run runs both.
test: install
	$(VPY) -m pytest -m "not slow" -q

TRITON36 := $(CACHE)/triton-3.6.0
$(TRITON36)/.installed: | install
	$(VPY) -m pip install -q --no-deps --target $(TRITON36) triton==3.6.0
	touch $@

triton-gate-3.6: install $(TRITON36)/.installed
	PYTHONPATH=$(TRITON36) $(VPY) tools/triton_gate.py

test-slow: install
	$(VPY) -m pytest -m slow -q

lint: install
	$(VENV)/bin/ruff check filtertron tests bench tools launch

demo: install
	$(VENV)/bin/filtertron demo

bench: install
	$(VPY) bench/attention.py
	$(VPY) bench/prepare.py
	$(VPY) bench/train_throughput.py
	$(VPY) bench/sweep_overhead.py

clean:
	rm -rf $(VENV) $(CACHE) runs
