# One entry surface. Every target installs what it needs on first use: a virtual environment
# created from pyproject.toml, re-installed whenever pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

PROFILE ?= quick

.PHONY: install wheels test test-fast reliability lint format describe train bench bench-gpu gpu-check bench-lightning clean sweep sweep-all report

# Sweeps: one target per study file in sweeps/ (make sweep-multigrid, make sweep-output_stride, …).
# PROFILE=paper DATA=voc DATA_ROOT=/data/voc STORAGE=postgresql://… WORKERS=4 SEEDS=0,1,2 ARGS="--set …"
# On a SLURM cluster: SLURM=N submits N workers as a job array (STORAGE=postgresql://… needed), e.g.
# make sweep-multigrid SLURM=8 STORAGE=postgresql+psycopg2://me@db/sweeps ARGS="--partition gpu --gpus-per-worker 1
# --wait" (docs/cluster.md).
STUDIES := $(basename $(notdir $(wildcard sweeps/*.yaml)))
SWEEP_FLAGS = $(if $(filter command line environment,$(origin PROFILE)),--profile $(PROFILE)) \
	$(if $(DATA),--set data.name=$(DATA)) $(if $(DATA_ROOT),--set data.root=$(DATA_ROOT)) \
	$(if $(STORAGE),--storage $(STORAGE)) $(if $(WORKERS),--workers $(WORKERS)) \
	$(if $(SLURM),--slurm $(SLURM)) $(if $(SEEDS),--seeds $(SEEDS)) $(ARGS)

# Offline GPU nodes (README). WHEELS=DIR installs from that folder of wheels alone (pip --no-index --find-links DIR).
# SYSTEM_TORCH=1 builds the venv on $(PYTHON)'s own torch and torchvision (--system-site-packages), pinned to the
# installed versions so pip installs only what is missing. Both together: make install SYSTEM_TORCH=1 WHEELS=DIR.
WHEELS       ?=
SYSTEM_TORCH ?=
SYSTEM       := $(filter 1 yes true,$(SYSTEM_TORCH))
PIP_FROM     := $(if $(WHEELS),--no-index --find-links $(abspath $(WHEELS)))
SYSTEM_PINS  := $(VENV)/system-torch.txt
# Extras installed: dev (tests, lint) and crf (the dense CRF, eval.crf; it compiles, so an offline wheel folder
# leaves it out unless EXTRAS=dev,crf and the folder holds a pydensecrf2 wheel built with pip wheel pydensecrf2).
comma        := ,
EXTRAS       ?= dev$(if $(WHEELS),,$(comma)crf)

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(if $(SYSTEM),--system-site-packages) $(VENV)
ifneq ($(SYSTEM),)
	@grep -q '^include-system-site-packages = true' $(VENV)/pyvenv.cfg || \
		{ echo "$(VENV) does not see the system's packages: make clean, then make install SYSTEM_TORCH=1"; exit 2; }
endif
	$(BIN)/python -m pip install $(PIP_FROM) --upgrade pip
ifneq ($(SYSTEM),)
	$(BIN)/python scripts/wheels.py pins torch torchvision > $(SYSTEM_PINS)
endif
	$(BIN)/python -m pip install $(PIP_FROM) $(if $(SYSTEM),--constraint $(SYSTEM_PINS)) -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The wheel folder for make install WHEELS=DIR, built on a machine with a network: make wheels WHEELS=DIR. With
# SYSTEM_TORCH=1 it leaves out torch, torchvision, triton and the CUDA wheels (and what only they need); name more in
# WHEELS_EXCLUDE (globs), e.g. WHEELS_EXCLUDE="lightning pytorch-lightning" for a node that has Lightning. For a node
# unlike this machine: PLATFORM=manylinux_2_28_x86_64 (its glibc and CPU; the older manylinux tags follow) PYVER=3.12
# (its Python; pip still reads dependency markers on the Python that runs it, so PYTHON=python3.12 fits a 3.12 node
# best). Wheels only, so the node needs no compiler.
WHEELS_EXCLUDE ?=
PLATFORM       ?=
PYVER          ?=
TORCH_WHEELS   := torch torchvision torchaudio triton nvidia-* cuda-*
wheels:
	@test -n "$(WHEELS)" || { echo "make wheels WHEELS=DIR [SYSTEM_TORCH=1] [PLATFORM=…] [PYVER=…]"; exit 2; }
	$(PYTHON) scripts/wheels.py download $(WHEELS) $(foreach p,$(if $(SYSTEM),$(TORCH_WHEELS)) $(WHEELS_EXCLUDE),\
		--exclude '$(p)') $(if $(PLATFORM),--platform '$(PLATFORM)') $(if $(PYVER),--python-version $(PYVER))

# The test command the README names and CI runs: lint, format check, then the CPU test suite.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# The contract tests alone (no training, sweeps, CLI subprocesses, PostgreSQL or fault suite), after the same lint.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -m "not e2e and not postgres and not reliability"

# The fault suite alone (kill -9 and Ctrl-C mid-trial, concurrent workers, NaN/OOM, edited studies, a deleted
# storage, a full disk, bad checkpoints, secrets, and on a local SLURM controller (tests/slurm) job arrays,
# preemption and requeue); each test writes its row of reports/reliability.md.
RELIABILITY_ROWS := .reliability-rows.jsonl
reliability: $(STAMP)
	rm -f $(RELIABILITY_ROWS)
	ABLATIONS_RELIABILITY_ROWS=$(abspath $(RELIABILITY_ROWS)) $(BIN)/pytest -q -m reliability tests/reliability tests/slurm; \
	status=$$?; $(BIN)/python -m tests.reliability.render $(RELIABILITY_ROWS) reports/reliability.md; \
	rm -f $(RELIABILITY_ROWS); exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# make describe ARGS="--set backbone.output_stride=8"
describe: $(STAMP)
	$(BIN)/ablations describe $(ARGS)

# make train PROFILE=quick ARGS="--set backbone.output_stride=8 --out runs/os8"
train: $(STAMP)
	$(BIN)/ablations train --profile $(PROFILE) $(ARGS)

# Lightning's overhead against a plain PyTorch loop on the same model and batches (prints the ratio).
# Throughput of the standard configs (OS 8/16/32 × ASPP × decoder), plain and fast path, and of the peers with
# the ratios; on the machine's GPU when it has one, else the CPU. make bench ARGS="--batch-sizes 1,8"
bench: $(STAMP)
	$(BIN)/ablations bench --standard --peers --fast $(ARGS) --out reports/bench.md

# The same on a GPU at 513×513, batches 1 and 8, plus a training step of the paper profile (MFU).
bench-gpu: $(STAMP)
	$(BIN)/ablations bench --device cuda --standard --peers --fast --batch-sizes 1,8 $(ARGS) --out reports/bench-gpu.md
	$(BIN)/ablations bench --device cuda --profile paper --mode train --fast --batch-sizes 8 $(ARGS) \
		--out reports/bench-gpu-train.md

# Every GPU figure the project lacks, within a wall-time budget (ablations/gpucheck.py): a trimmed bench-gpu (ours vs
# the peers, train and infer, plain vs bf16 + channels-last, batch 8, 513²), the faithful trial, then as much of the
# faithful multigrid sweep as fits; the same command continues it. make gpu-check BUDGET=540 OUT=reports/gpu-check
# ARGS="--device cpu --tiny" for the whole path at toy sizes on a CPU.
BUDGET ?= 540
OUT    ?= runs/gpu-check
gpu-check: $(STAMP)
	$(BIN)/ablations gpu-check --out $(OUT) --budget-s $(BUDGET) $(ARGS)

bench-lightning: $(STAMP)
	$(BIN)/python benchmarks/lightning_overhead.py --profile $(PROFILE)

$(addprefix sweep-,$(STUDIES)): sweep-%: $(STAMP)
	$(BIN)/ablations sweep sweeps/$*.yaml $(SWEEP_FLAGS)

# make sweep STUDY=multigrid
sweep: $(STAMP)
	@test -n "$(STUDY)" || { echo "make sweep STUDY=<name>: one of $(STUDIES)"; exit 2; }
	$(BIN)/ablations sweep sweeps/$(STUDY).yaml $(SWEEP_FLAGS)

sweep-all: $(addprefix sweep-,$(STUDIES))

# Every study's page, tables and figures in reports/, from reports/data (refreshed first from runs/sweeps/*/optuna.db
# when there are storages). make report ARGS="--bench" also re-times every arm interleaved; ARGS="--format md,csv,tex".
report: $(STAMP)
	$(BIN)/ablations report $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
