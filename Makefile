# Two commands set everything up on a fresh machine (Python 3.11, pip, git):
#   make repro   venv + install + `dvc repro` on params.yaml
#   make test    venv + install + the whole test suite
VENV := .venv
BIN := $(abspath $(VENV))/bin
INSTALLED := $(VENV)/.installed
# stages call `python`, dvc and mlflow: run them with the venv first on PATH
RUN := PATH="$(BIN):$$PATH"
.DEFAULT_GOAL := help

help: ## list every target with what it does (the default)
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: help team-setup team-up team-down team-study team-collect setup repro test test-fast exp compare structure plateau plateau-study evidence bench bench-study bench-before-after seed-config quick-sweep sweep report replay gpu-setup sync verify

$(INSTALLED): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lab,test,team]'
	touch $(INSTALLED)

setup: $(INSTALLED) ## create .venv/ and install the pinned dependencies (the other targets do it when needed)

repro: $(INSTALLED) ## run the pipeline (dvc repro) on params.yaml
	$(RUN) dvc repro

# lint + format check, then the whole suite; `make test-fast` skips the end-to-end (slow) tests
test: $(INSTALLED) ## ruff (lint + format check), then the whole test suite; lists the 15 slowest tests
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) python -m pytest --durations=15

test-fast: $(INSTALLED) ## the unit tests only (pytest -m "not slow"): the inner loop
	$(RUN) python -m pytest -m "not slow"

# Complete the MLflow run of the last training from its files, after the store failed mid-run
# (the train stage says so in one line); running it again adds nothing
sync: $(INSTALLED) ## complete the last training's MLflow run from its files, after the store failed mid-run
	$(RUN) python -m study.sync

# Check every output dvc.lock records, workspace copy and DVC cache object, against its md5;
# one line per damaged copy with the repair that works (spikelab/integrity.py)
verify: $(INSTALLED) ## check every DVC output and cache object against dvc.lock, one line per damaged copy
	$(RUN) python -m spikelab.integrity

# Samples/s of the lab's loop vs bare model.fit vs the seed's generator, FLOP/s vs the matmul
# peak, dvc repro wall times, then the study's runs per hour -> benchmarks/results.json
# (about 25 minutes on 2 cores; run it with nothing else on the machine; docs/performance.md)
bench: $(INSTALLED) ## training-loop speed, FLOP/s against the matmul peak, dvc repro wall time, then bench-study
	$(RUN) python -m benchmarks.bench
	$(RUN) python -m benchmarks.study_throughput

# Study throughput: runs per hour of `dvc queue start -j 1` and `-j 2` on the default params, and
# where a run's seconds go (stages vs DVC) -> benchmarks/results.json (~15 minutes; quiet machine)
bench-study: $(INSTALLED) ## runs per hour of the study's DVC queue at -j 1 and -j 2, and where a run's seconds go
	$(RUN) python -m benchmarks.study_throughput

# The study's runs per hour, this code against an older commit's (BASELINE, default: the code
# before issue 12), in one sitting, taking turns -> study_ab in benchmarks/results.json
# (~30 minutes; quiet machine)
BASELINE ?= 3a31d71
bench-before-after: $(INSTALLED) ## runs per hour of this code against BASELINE=<rev>, taking turns in one sitting
	$(RUN) python -m benchmarks.study_ab --baseline-rev $(BASELINE) --rounds 3 --runs 4

# The seed's full-scale configuration (GPU advised): 64 filters, lr 1e-5, 250k images/class,
# 1,024 held out, batch 256, 4,680 epochs, Keras-2 clipped BCE.
seed-config: $(INSTALLED) ## the original case at full scale (GPU advised): 64 filters, 250k images/class, 4,680 epochs
	$(RUN) dvc exp run -n seed-full-scale \
	  -S data.per_class=251024 -S split.val_per_class=1024 -S model.filters=64 \
	  -S optimizer.learning_rate=1e-5 -S train.epochs=4680 -S train.batch_size=256 \
	  -S loss.name=binary_crossentropy -S loss.form=keras2_clipped

# The study (docs/study.md): study/sweep.yaml queued as DVC experiments, run 2 at a time, then the
# tables and figure in study/results/. A failed run does not stop the report: it is a row there.
quick-sweep: $(INSTALLED) ## 3 cells x 2 seeds of study/sweep.yaml as DVC experiments, then the report
	-$(RUN) python -m study.sweep queue --quick
	$(RUN) python -m study.report --quick

sweep: $(INSTALLED) ## every cell of study/sweep.yaml x 5 seeds (45 runs), then the report
	-$(RUN) python -m study.sweep queue
	$(RUN) python -m study.report

# "Network structure?": the twins split and a ReLU between the convolutions, 4 cells x 5 seeds
structure: $(INSTALLED) ## the twins split and a ReLU between the convolutions, 4 cells x 5 seeds, then the report
	-$(RUN) python -m study.sweep queue --sweep study/structure.yaml
	$(RUN) python -m study.report --sweep study/structure.yaml

# The plateau preset: the default at learning rate 0.01 for 200 epochs, where the clipped loss
# climbs and stays up (docs/journal/plateau_search.md), as one DVC experiment named `plateau`
plateau: $(INSTALLED) ## one run of the plateau configuration (lr 0.01, 200 epochs) as the DVC experiment `plateau`
	$(RUN) dvc exp run -n plateau -S optimizer.learning_rate=0.01 -S train.epochs=200

# The plateau study: that configuration x interventions x 5 seeds, then its replays
plateau-study: $(INSTALLED) ## the plateau configuration x 5 interventions x 5 seeds, the report, its replays
	-$(RUN) python -m study.sweep queue --sweep study/plateau.yaml
	$(RUN) python -m study.report --sweep study/plateau.yaml
	$(RUN) python -m study.replay --exp plateau-baseline-s0 --name replay_plateau

# One DVC experiment named after its changes, checked against params.yaml first; the legend of
# `dvc plots diff <name> <name>` then says what differs:  make exp S="optimizer.epsilon=1e-3 train.seed=2"
exp: $(INSTALLED) ## one DVC experiment named after its changes: make exp S="optimizer.epsilon=1e-3 train.seed=2"
	$(RUN) python -m study.exp $(S)

# the current commit's experiments in one narrow table (changed params + the key metrics)
compare: $(INSTALLED) ## this commit's experiments in one narrow table: changed params and the key metrics
	$(RUN) python -m study.compare

report: $(INSTALLED) ## the tables and figure of study/sweep.yaml from `dvc exp show`
	$(RUN) python -m study.report

# The evidence study (issue 11): 13 cells x 20 seeds with both spike predictors logged, ~4.5 h on
# 2 cores; stopped part-way, running it again goes on where it stopped (study/evidence.yaml)
evidence: $(INSTALLED) ## the evidence study: 13 cells x 20 seeds (260 runs), report, spike predictors; resumable
	-$(RUN) python -m study.sweep queue --sweep study/evidence.yaml
	$(RUN) python -m study.report --sweep study/evidence.yaml
	$(RUN) python -m study.predictors --sweep study/evidence.yaml

# Counterfactual replays of the workspace run's spike (EXP=<name> replays a sweep experiment instead)
replay: $(INSTALLED) ## counterfactual replays of the workspace run's spike (EXP=<name>: a sweep experiment's)
	$(RUN) python -m study.replay $(if $(EXP),--exp $(EXP))

# On a machine with an NVIDIA GPU: swap the CPU build of TensorFlow for the CUDA one.
gpu-setup: $(INSTALLED) ## on a machine with an NVIDIA GPU: swap the CPU build of TensorFlow for the CUDA one
	$(BIN)/python -m pip uninstall --yes tensorflow-cpu
	$(BIN)/python -m pip install "tensorflow[and-cuda]==2.21.0"

# ---- team mode (docs/team.md) ----------------------------------------------------------------------
# PostgreSQL from the OS's packages where it is missing (root, or sudo)
team-setup: ## PostgreSQL from the OS's packages where it is missing (root, or sudo)
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "PostgreSQL: installed"; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null \
	  && echo "PostgreSQL: installed from the OS packages"; \
	fi

# the whole team stack on this machine, on loopback; prints the client settings to export
team-up: $(INSTALLED) team-setup ## the whole team stack on this machine, on loopback; prints the client settings to export
	$(RUN) python -m team.stack up

team-down: $(INSTALLED) ## stop the team stack (its data stays in .team/)
	$(RUN) python -m team.stack down

# SWEEP=study/sweep.yaml by default; with the settings of `python -m team.stack env` exported
SWEEP ?= study/sweep.yaml
team-study: $(INSTALLED) ## a sweep (SWEEP=study/sweep.yaml) as Ray tasks on the team stack
	$(RUN) python -m team.study submit --sweep $(SWEEP)

team-collect: $(INSTALLED) ## pull the team study's experiments and write its report, failed runs as rows
	$(RUN) python -m team.study collect --sweep $(SWEEP)
