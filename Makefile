# Two commands set everything up on a fresh machine (Python 3.11, pip, git):
#   make repro   venv + install + `dvc repro` on params.yaml
#   make test    venv + install + the whole test suite
VENV := .venv
BIN := $(abspath $(VENV))/bin
INSTALLED := $(VENV)/.installed
# stages call `python`, dvc and mlflow: run them with the venv first on PATH
RUN := PATH="$(BIN):$$PATH"

.PHONY: team-setup team-up team-down team-study team-collect setup repro test test-fast exp compare structure plateau plateau-study evidence bench bench-study bench-before-after seed-config quick-sweep sweep report replay gpu-setup sync verify

$(INSTALLED): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,team]'
	touch $(INSTALLED)

setup: $(INSTALLED)

repro: $(INSTALLED)
	$(RUN) dvc repro

# lint + format check, then the whole suite; `make test-fast` skips the end-to-end (slow) tests
test: $(INSTALLED)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) python -m pytest

test-fast: $(INSTALLED)
	$(RUN) python -m pytest -m "not slow"

# Complete the MLflow run of the last training from its files, after the store failed mid-run
# (the train stage says so in one line); running it again adds nothing
sync: $(INSTALLED)
	$(RUN) python -m study.sync

# Check every output dvc.lock records, workspace copy and DVC cache object, against its md5;
# one line per damaged copy with the repair that works (spikelab/integrity.py)
verify: $(INSTALLED)
	$(RUN) python -m spikelab.integrity

# Samples/s of the lab's loop vs bare model.fit vs the seed's generator, FLOP/s vs the matmul
# peak, dvc repro wall times, then the study's runs per hour -> benchmarks/results.json
# (about 25 minutes on 2 cores; run it with nothing else on the machine; docs/performance.md)
bench: $(INSTALLED)
	$(RUN) python -m benchmarks.bench
	$(RUN) python -m benchmarks.study_throughput

# Study throughput: runs per hour of `dvc queue start -j 1` and `-j 2` on the default params, and
# where a run's seconds go (stages vs DVC) -> benchmarks/results.json (~15 minutes; quiet machine)
bench-study: $(INSTALLED)
	$(RUN) python -m benchmarks.study_throughput

# The study's runs per hour, this code against an older commit's (BASELINE, default: the code
# before issue 12), in one sitting, taking turns -> study_ab in benchmarks/results.json
# (~30 minutes; quiet machine)
BASELINE ?= 3a31d71
bench-before-after: $(INSTALLED)
	$(RUN) python -m benchmarks.study_ab --baseline-rev $(BASELINE) --rounds 3 --runs 4

# The seed's full-scale configuration (GPU advised): 64 filters, lr 1e-5, 250k images/class,
# 1,024 held out, batch 256, 4,680 epochs, Keras-2 clipped BCE.
seed-config: $(INSTALLED)
	$(RUN) dvc exp run -n seed-full-scale \
	  -S data.per_class=251024 -S split.val_per_class=1024 -S model.filters=64 \
	  -S optimizer.learning_rate=1e-5 -S train.epochs=4680 -S train.batch_size=256 \
	  -S loss.name=binary_crossentropy -S loss.form=keras2_clipped

# The study engine: dvc (default) queues one DVC experiment per run, 2 at a time; population
# trains each cell's seeds together, two populations at a time like the queue's -j 2
# (study/population.py; docs/performance.md),
# each member still a full run's outputs and its own MLflow run:  make evidence ENGINE=population
ENGINE ?= dvc
ifeq ($(filter $(ENGINE),dvc population),)
$(error ENGINE=$(ENGINE): use ENGINE=dvc or ENGINE=population)
endif
STUDY := $(if $(filter population,$(ENGINE)),python -m study.population --jobs 2,python -m study.sweep queue)
REPORT := python -m study.report --engine $(ENGINE)

# The study (docs/study.md): study/sweep.yaml run by the ENGINE, then the tables and figure in
# study/results/. A failed run does not stop the report: it is a row there.
quick-sweep: $(INSTALLED)
	-$(RUN) $(STUDY) --quick
	$(RUN) $(REPORT) --quick

sweep: $(INSTALLED)
	-$(RUN) $(STUDY)
	$(RUN) $(REPORT)

# "Network structure?": the twins split and a ReLU between the convolutions, 4 cells x 5 seeds
structure: $(INSTALLED)
	-$(RUN) $(STUDY) --sweep study/structure.yaml
	$(RUN) $(REPORT) --sweep study/structure.yaml

# The plateau preset: the default at learning rate 0.01 for 200 epochs, where the clipped loss
# climbs and stays up (docs/plateau_search.md), as one DVC experiment named `plateau`
plateau: $(INSTALLED)
	$(RUN) dvc exp run -n plateau -S optimizer.learning_rate=0.01 -S train.epochs=200

# The plateau study: that configuration x interventions x 5 seeds, then its replays
plateau-study: $(INSTALLED)
	-$(RUN) $(STUDY) --sweep study/plateau.yaml
	$(RUN) $(REPORT) --sweep study/plateau.yaml
	$(RUN) python -m study.replay --exp plateau-baseline-s0 --name replay_plateau

# One DVC experiment named after its changes, checked against params.yaml first; the legend of
# `dvc plots diff <name> <name>` then says what differs:  make exp S="optimizer.epsilon=1e-3 train.seed=2"
exp: $(INSTALLED)
	$(RUN) python -m study.exp $(S)

# the current commit's experiments in one narrow table (changed params + the key metrics)
compare: $(INSTALLED)
	$(RUN) python -m study.compare

report: $(INSTALLED)
	$(RUN) python -m study.report

# The evidence study (issue 11): 13 cells x 20 seeds with both spike predictors logged, ~4.5 h on
# 2 cores; stopped part-way, running it again goes on where it stopped (study/evidence.yaml)
evidence: $(INSTALLED)
	-$(RUN) $(STUDY) --sweep study/evidence.yaml
	$(RUN) $(REPORT) --sweep study/evidence.yaml
	$(RUN) python -m study.predictors --sweep study/evidence.yaml

# Counterfactual replays of the workspace run's spike (EXP=<name> replays a sweep experiment instead)
replay: $(INSTALLED)
	$(RUN) python -m study.replay $(if $(EXP),--exp $(EXP))

# On a machine with an NVIDIA GPU: swap the CPU build of TensorFlow for the CUDA one.
gpu-setup: $(INSTALLED)
	$(BIN)/python -m pip uninstall --yes tensorflow-cpu
	$(BIN)/python -m pip install "tensorflow[and-cuda]==2.21.0"

# ---- team mode (docs/team.md) ----------------------------------------------------------------------
# PostgreSQL from the OS's packages where it is missing (root, or sudo)
team-setup:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "PostgreSQL: installed"; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null \
	  && echo "PostgreSQL: installed from the OS packages"; \
	fi

# the whole team stack on this machine, on loopback; prints the client settings to export
team-up: $(INSTALLED) team-setup
	$(RUN) python -m team.stack up

team-down: $(INSTALLED)
	$(RUN) python -m team.stack down

# SWEEP=study/sweep.yaml by default; with the settings of `python -m team.stack env` exported
SWEEP ?= study/sweep.yaml
team-study: $(INSTALLED)
	$(RUN) python -m team.study submit --sweep $(SWEEP)

team-collect: $(INSTALLED)
	$(RUN) python -m team.study collect --sweep $(SWEEP)
