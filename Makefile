# The user's entry points. Every target bootstraps its own virtualenv from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXP ?= dqn
TOWN ?= GridTown01

.PHONY: help setup train infer eval demo preview test test-slow lint bench learning carla-smoke ami ami-lock cluster-up cluster-down cluster-status submit infra-check clean

help:
	@echo "make train EXP=dqn   train with RLlib (embedded simulator when no CARLA is installed)"
	@echo "make infer EXP=dqn   drive the newest checkpoint of runs/EXP (none yet: the shipped pretrained module;"
	@echo "                     or CHECKPOINT=...): table, JSON, video"
	@echo "make eval EXP=ppo POLICY=autopilot|random|runs/ppo [TOWNS=T1,T2|all] [EPISODES=10] [MAPS=../shared/maps] [VIDEOS=dir]"
	@echo "                     score a policy per town and overall, say where the targets are met; TOWNS=all:"
	@echo "                     the held-out town + Town01/02/04/10HD from MAPS or CARLA_ROOT, 50 episodes each"
	@echo "make demo            a lane-following hero among traffic, no learning"
	@echo "make test            unit + integration tests (CI runs this)"
	@echo "make test-slow       long suites (10,000-tick traffic soak on every town)"
	@echo "make lint            ruff, format check, import-layering contracts"
	@echo "make preview         runs/preview/bev.png + bev_map.png: the bird's-eye view of TOWN"
	@echo "make bench           simulator and BEV throughput (figures in JSON)"
	@echo "make carla-smoke     with CARLA_ROOT set: 2 servers of one slot, 200 frames with BEV, kill -9 mid-run; FPS, restarts, events"
	@echo "make ami             build the CARLA AMI with Packer (AWS); records its id for terraform"
	@echo "make cluster-up      checks (quota, plugin), cost and plan summary, then results bucket + private Ray cluster"
	@echo "make cluster-down    destroy the cluster; the results bucket and its checkpoints stay"
	@echo "make cluster-status  head, workers, ray status"
	@echo "make submit EXP=dqn  train on the cluster (= make train EXP=dqn CLUSTER=1), streams logs"
	@echo "make infra-check     terraform fmt, checkov, packer validate, HCL/ops/user_data tests (offline)"
	@echo "make ami-lock        regenerate packer/requirements.lock (hashed pins of pyproject.toml for the AMI)"
	@echo "make learning        GPU machine: train PPO+DQN, evaluate on a held-out town, scale; writes docs/results/"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Extra train.py flags: make train EXP=dqn ARGS="--restore"; CLUSTER=1 trains on the AWS cluster.
ifdef CLUSTER
train: submit
else
train: $(STAMP)
	$(PY) train.py experiments/$(EXP)/config.yaml $(ARGS)
endif

# runs/EXP once trained; before that the module shipped in experiments/EXP/pretrained.
CHECKPOINT ?= $(or $(wildcard runs/$(EXP)),$(wildcard experiments/$(EXP)/pretrained),runs/$(EXP))
infer: $(STAMP)
	$(PY) infer.py $(CHECKPOINT) --episodes 5 --video runs/$(EXP)-infer.mp4 --json runs/$(EXP)-infer.json

# A policy scored on TOWNS (default: the config's; `all`: the held-out town and the real CARLA towns
# from MAPS or CARLA_ROOT) over EPISODES seeded episodes each (default 10, 50 with TOWNS=all), in
# EVAL_WORKERS processes. autopilot and random drive experiments/EXP's config; a checkpoint its run's
# (or CONFIG=...). VIDEOS=DIR: a BEV video of each episode that misses a target.
POLICY ?= runs/$(EXP)
EVAL_WORKERS ?= 2
EVAL_CONFIG = $(or $(CONFIG),$(if $(filter autopilot random,$(POLICY)),experiments/$(EXP)/config.yaml))
eval: $(STAMP)
	$(PY) -m carla_env.evaluate --policy $(POLICY) $(if $(EVAL_CONFIG),--config $(EVAL_CONFIG)) \
		$(if $(TOWNS),--towns "$(TOWNS)") $(if $(MAPS),--maps $(MAPS)) $(if $(EPISODES),--episodes $(EPISODES)) \
		$(if $(VIDEOS),--failure-videos "$(VIDEOS)") \
		--workers $(EVAL_WORKERS) --json runs/eval/$(EXP)-$(notdir $(POLICY))$(if $(filter all,$(TOWNS)),-all).json

demo: $(STAMP)
	$(PY) -m carla_env.demo --town $(TOWN)

preview: $(STAMP)
	$(PY) -m carla_env.preview --town $(TOWN)

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m ruff format --check carla_env bench tests experiments ops train.py infer.py

bench: $(STAMP)
	$(PY) bench/sim_throughput.py --town $(TOWN) --vehicles 50 --steps 3000 --json
	$(PY) bench/bev_throughput.py --town $(TOWN) --vehicles 50 --json

carla-smoke: $(STAMP)
	$(PY) -m carla_env.carla_server.smoke $(ARGS)

# The cloud CLI runs from its own venv with pyproject's [cloud] extra alone: no simulator, no torch.
OPS_VENV := .venv-ops
OPS_PY := $(OPS_VENV)/bin/python
OPS_STAMP := $(OPS_VENV)/.installed
$(OPS_STAMP): pyproject.toml
	$(PYTHON) -m venv $(OPS_VENV)
	$(OPS_PY) -m pip install -q --upgrade pip
	$(OPS_PY) -m pip install -q --no-deps -e .
	$(OPS_PY) -m ops.requirements cloud > $(OPS_VENV)/requirements.txt
	$(OPS_PY) -m pip uninstall -q -y carla-env  # only its metadata was needed; ops runs from the repo
	$(OPS_PY) -m pip install -q -r $(OPS_VENV)/requirements.txt
	touch $@

REGION ?= us-west-2
WORKERS ?= 2
ami: $(OPS_STAMP)
	$(OPS_PY) -m ops --region $(REGION) ami

cluster-up: $(OPS_STAMP)
	$(OPS_PY) -m ops --region $(REGION) up --workers $(WORKERS)

cluster-down: $(OPS_STAMP)
	$(OPS_PY) -m ops --region $(REGION) down

cluster-status: $(OPS_STAMP)
	$(OPS_PY) -m ops --region $(REGION) status

submit: $(OPS_STAMP)
	$(OPS_PY) -m ops --region $(REGION) submit $(EXP) --args "$(ARGS)"

# checkov in its own venv: its pins clash with Ray's.
INFRA_VENV := .venv-infra
$(INFRA_VENV)/.installed:
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/pip install -q "checkov>=3.2"
	touch $@

# INFRA_TESTS=0: the tools only (CI, where `make test` has just run these tests).
INFRA_TESTS ?= 1
infra-check: $(STAMP) $(INFRA_VENV)/.installed
	terraform fmt -check -recursive terraform
	$(INFRA_VENV)/bin/checkov -d terraform --framework terraform --quiet --compact --skip-download
ifneq ($(INFRA_TESTS),0)
	$(PY) -m pytest tests/test_infra.py tests/test_ops.py -v -rs
endif

# The AMI installs exactly these, hash-checked: Python 3.11 on Ubuntu 22.04 (glibc 2.35), wheels only.
ami-lock: $(INFRA_VENV)/.installed
	$(INFRA_VENV)/bin/pip install -q uv
	{ echo "# The AMI's Python environment, every file hash-checked (pip --require-hashes in"; \
	  echo "# packer/scripts/03-python-env.sh). Regenerate after changing pyproject.toml: make ami-lock"; \
	  $(INFRA_VENV)/bin/uv pip compile pyproject.toml --extra train --python-version 3.11 --python-platform x86_64-manylinux_2_35 \
	    --generate-hashes --no-header --only-binary :all: --quiet; } > packer/requirements.lock

# docs/results on a GPU machine, about an hour: DAgger, PPO from it, PPO without the marking and
# speeding penalties, then PPO and DQN from scratch, baselines, scaling, report (ARGS: that last step's).
NO_PENALTIES := '{"lane_invasion_penalty": 0, "speeding_penalty": 0}'
learning: $(STAMP)
	$(PY) bench/imitation.py --samples 80000 --epochs 4 --batch 128 --dagger-rounds 3 --dagger-samples 40000
	$(PY) bench/learning.py --phases train,eval --algos ppo --tag dagger --lr 5e-5 --minutes 4 \
		--reward-options $(NO_PENALTIES) --init-module runs/imitation/no_ego_history_dagger/checkpoint
	$(PY) bench/learning.py --phases train,eval --algos ppo --tag unshaped --minutes 8 --reward-options $(NO_PENALTIES)
	$(PY) bench/learning.py $(ARGS)

clean:
	rm -rf $(VENV) $(INFRA_VENV) $(OPS_VENV) .pytest_cache .ruff_cache
