# Two commands set everything up on a fresh machine (Python 3.11, pip, git):
#   make repro   venv + install + `dvc repro` on params.yaml
#   make test    venv + install + the whole test suite
VENV := .venv
BIN := $(abspath $(VENV))/bin
INSTALLED := $(VENV)/.installed
# stages call `python`, dvc and mlflow: run them with the venv first on PATH
RUN := PATH="$(BIN):$$PATH"
.DEFAULT_GOAL := help

# A virtual environment records its own absolute path (the scripts' #! lines, the editable install):
# one made before the project moved or was renamed runs the old folder's tools, or none
VENV_MADE_IN := $(shell sed -n '1s|^\#!\(.*\)/bin/python[0-9.]*$$|\1|p' $(VENV)/bin/dvc 2>/dev/null)
ifneq ($(VENV_MADE_IN),)
ifneq ($(VENV_MADE_IN),$(abspath $(VENV)))
$(error .venv was made in $(VENV_MADE_IN), not here (the project moved or was renamed): rm -rf .venv && make setup, then make relocate)
endif
endif

help: ## list every target with what it does (the default), then the studies
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "studies/<name>/ (make study NAME=<name>; its README.md: the question, the command, the answer):"
	@for dir in $(sort $(dir $(wildcard studies/*/README.md studies/*/sweep.yaml))); do \
	  name=$$(basename $$dir); \
	  title=$$(sed -n "1{s/^# //;s/^$$name: //;p;}" $$dir/README.md 2>/dev/null); \
	  printf "  %-20s %s\n" "$$name" "$${title:-(no README.md yet)}"; \
	done

.PHONY: help tables ui exps relocate browser-setup plots-page team-setup team-up team-down team-study team-collect setup repro test test-fast exp compare preset plateau plateau-study evidence bench bench-study bench-before-after seed-config study quick-sweep report replay gpu-setup sync verify

$(INSTALLED): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lab,test,team]'
	touch $(INSTALLED)

setup: $(INSTALLED) ## create .venv/ and install the pinned dependencies (the other targets do it when needed)

# the lab's checks first: DVC parses params.yaml itself before any stage, and a file its parser
# chokes on (a YAML alias bomb, a 5,000-digit integer) would stop it in DVC's words, or not at all
repro: $(INSTALLED) ## run the pipeline (dvc repro) on params.yaml
	@$(RUN) python -m stages.validate > /dev/null
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
	$(RUN) python -m tools.sync

# Check every output dvc.lock records, workspace copy and DVC cache object, against its md5;
# one line per damaged copy with the repair that works (spikelab/plumbing/integrity.py)
verify: $(INSTALLED) ## check every DVC output and cache object against dvc.lock, one line per damaged copy
	$(RUN) python -m spikelab.plumbing.integrity

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

# The study's runs per hour, this code against an older commit's (BASELINE, default: the code of
# 2026-11-25, before the study's throughput work), in one sitting, taking turns -> study_ab in
# benchmarks/results.json (~30 minutes; quiet machine)
BASELINE ?= 3a31d71
bench-before-after: $(INSTALLED) ## runs per hour of this code against BASELINE=<rev>, taking turns in one sitting
	$(RUN) python -m benchmarks.study_ab --baseline-rev $(BASELINE) --rounds 3 --runs 4

# A named configuration (configs/NAME.yaml, only the keys it changes) as one DVC experiment named
# NAME (NAME-2, ... when taken), started from the committed params.yaml:  make preset NAME=plateau
preset: $(INSTALLED) ## a named configuration (configs/NAME.yaml) as one DVC experiment, from the committed params
	$(RUN) python -m tools.exp --preset "$(NAME)" $(if $(FROM),--from $(FROM)) $(S)

# The seed's full-scale configuration (GPU advised): configs/seed-full-scale.yaml
seed-config: ## the original case at full scale (GPU advised): configs/seed-full-scale.yaml
	@$(MAKE) --no-print-directory preset NAME=seed-full-scale

# The plateau configuration (configs/plateau.yaml: learning rate 0.01 for 200 epochs, where the
# clipped loss climbs and stays up; docs/journal/2026-11-25-plateau-search.md) as the DVC
# experiment `plateau`
plateau: ## the plateau configuration (configs/plateau.yaml: lr 0.01, 200 epochs) as one DVC experiment
	@$(MAKE) --no-print-directory preset NAME=plateau

# One DVC experiment named after its changes, started from the committed params.yaml (FROM=workspace:
# from the workspace's as it is), checked first, run in DVC's copy (the workspace is left as it is);
# the legend of `dvc plots diff <name> <name>` says what differs:  make exp S="optimizer.epsilon=1e-3"
exp: $(INSTALLED) ## one DVC experiment from the committed params + S: make exp S="optimizer.epsilon=1e-3"
	$(RUN) python -m tools.exp $(if $(FROM),--from $(FROM)) $(S)

# `mlflow ui` on the project's store (127.0.0.1:PORT) and the link that opens its runs table in the
# training view (MLflow 3 otherwise starts in its GenAI view)
PORT ?= 5000
ui: $(INSTALLED) ## mlflow ui on the project's store (127.0.0.1:PORT) + the link to its runs table
	$(RUN) python -m tools.ui --port $(PORT)

# `dvc exp show` in a terminal: only the params that differ between the rows (--only-changed), every
# column that is not a param dropped (the negative look-ahead) but the experiment and 4 metrics (--keep)
EXPS_DROP := '(?!(data|split|model|optimizer|loss|train|divergence|plateau|guard|diagnostics)\.)'
EXPS_KEEP := '(Experiment|diverged|jump_ratio|plateaued|final_loss)$$'
exps: $(INSTALLED) ## dvc exp show trimmed to the params that differ and 4 metrics (more: dvc exp show --help)
	$(RUN) dvc exp show --only-changed --drop $(EXPS_DROP) --keep $(EXPS_KEEP) $(ARGS)

# after the project moved or was renamed: point the MLflow store's recorded artifact folders here
relocate: $(INSTALLED) ## after the project moved or was renamed: point the MLflow store here
	$(RUN) python -m tools.relocate

# your default run (this machine, this code), the committed one, the workspace's last run and this
# commit's experiments in 100 columns: the params each changed against the committed params.yaml + the
# key metrics (ARGS=--all: every column)
compare: $(INSTALLED) ## your default run, the committed one, this commit's experiments (ARGS=--all: every column)
	$(RUN) python -m tools.compare $(ARGS)

# ---- studies: one folder each, studies/<name>/ (README.md, sweep.yaml, results/; studies/README.md) ---
# The study engine: population (the default) trains each cell's seeds together, two populations at a
# time (study/population.py; docs/performance.md), each member still a full run's outputs and its own
# MLflow run; dvc queues one DVC experiment per run, 2 at a time, for what only a DVC run does (the
# guard, XLA: the population engine refuses those in one line naming ENGINE=dvc). Either way the
# study is resumable: finished runs, and rows committed in its results/, are not trained again.
ENGINE ?= population
ifeq ($(filter $(ENGINE),dvc population),)
$(error ENGINE=$(ENGINE): use ENGINE=population (the default) or ENGINE=dvc)
endif
STUDIES := $(patsubst studies/%/sweep.yaml,%,$(wildcard studies/*/sweep.yaml))
SWEEP_OF = studies/$(NAME)/sweep.yaml
RESULTS_OF = studies/$(NAME)/results
ENGINE_COMMAND = $(if $(filter population,$(ENGINE)),python -m study.population --jobs 2 --results $(RESULTS_OF),python -m study.sweep queue)
REPORT_COMMAND = python -m study.report --engine $(ENGINE) --results $(RESULTS_OF)
# A study's own analysis, run after its report from its results: studies/<name>/analysis.py, or the
# module named here (ANALYSIS_<name>)
ANALYSIS_remedies := studies.remedies.atlas
ANALYSIS = $(or $(ANALYSIS_$(NAME)),$(if $(wildcard studies/$(NAME)/analysis.py),studies.$(NAME).analysis))
CHECK_STUDY = if [ ! -f "$(SWEEP_OF)" ]; then echo "make: NAME=$(NAME): no $(SWEEP_OF); the studies with a sweep: $(STUDIES) (studies/<name>/README.md says how the others run)" >&2; exit 2; fi

# The engine, then the report, then the study's own analysis. A failed run does not stop the report
# (it is a row there); a refused study (exit status 2: a bad sweep, a key the engine cannot train) does
study: $(INSTALLED) ## one study, resumable: make study NAME=<name> [ENGINE=dvc] [QUICK=1]; `make` lists them
	@$(CHECK_STUDY)
	$(RUN) $(ENGINE_COMMAND) --sweep $(SWEEP_OF) $(if $(QUICK),--quick) || [ $$? -ne 2 ]
	$(RUN) $(REPORT_COMMAND) --sweep $(SWEEP_OF) $(if $(QUICK),--quick)
	$(if $(and $(ANALYSIS),$(if $(QUICK),,yes)),$(RUN) python -m $(ANALYSIS))

tables: $(INSTALLED) ## every study's tables and figures recomputed from the committed rows, nothing trained
	$(RUN) python -m tools.recompute

report: $(INSTALLED) ## a study's report again from its runs, nothing trained: make report NAME=<name> [ENGINE=dvc]
	@$(CHECK_STUDY)
	$(RUN) $(REPORT_COMMAND) --sweep $(SWEEP_OF) $(if $(QUICK),--quick)

quick-sweep: ## the first study's quick subset, 3 cells x 2 seeds (make study NAME=sweep QUICK=1)
	@$(MAKE) --no-print-directory study NAME=sweep QUICK=1

evidence: ## the evidence study, 13 cells x 20 seeds (make study NAME=evidence), then its predictors
	@$(MAKE) --no-print-directory study NAME=evidence

# The plateau study, then replays of its seed-0 run with its own interventions (its sweep's `replay`)
plateau-study: ## the plateau study (make study NAME=plateau), then replays of its seed-0 run
	@$(MAKE) --no-print-directory study NAME=plateau
	@$(MAKE) --no-print-directory replay NAME=plateau EXP=plateau-baseline-s0 AS=replay_plateau

# Counterfactual replays of a run's spike, once unchanged and once per `replay` cell of the sweep.
# Without NAME: the workspace run's (EXP=<name>: a DVC experiment's), with the first study's cells
# -> studies/sweep/results/replay.*. With NAME=<study> EXP=<run>: that study's run through the ENGINE
# (a population member by default, a DVC experiment with ENGINE=dvc) -> studies/<study>/results/<AS>.*
REPLAY_COMMAND = $(if $(filter population,$(ENGINE)),python -m study.population --replay $(EXP),python -m study.replay --exp $(EXP)) --sweep $(SWEEP_OF) --name $(or $(AS),replay) --results $(RESULTS_OF)
replay: $(INSTALLED) ## counterfactual replays of a spike: the workspace run's, or NAME=<study> EXP=<run> [AS=<file name>]
	@$(if $(NAME),$(CHECK_STUDY); if [ -z "$(EXP)" ]; then echo "make replay: NAME=$(NAME) needs EXP=<one of its runs>" >&2; exit 2; fi)
	$(RUN) $(if $(NAME),$(REPLAY_COMMAND),python -m study.replay $(if $(EXP),--exp $(EXP)))

# On a machine with an NVIDIA GPU: swap the CPU build of TensorFlow for the CUDA one.
gpu-setup: $(INSTALLED) ## on a machine with an NVIDIA GPU: swap the CPU build of TensorFlow for the CUDA one
	$(BIN)/python -m pip uninstall --yes tensorflow-cpu
	$(BIN)/python -m pip install "tensorflow[and-cuda]==2.21.0"

# Chromium from the OS's packages where it is missing (root, or sudo): the plots pages and the
# MLflow UI are tested in a real headless browser (tests/browser.py)
browser-setup: ## Chromium from the OS's packages where missing, for the browser tests
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1; then \
	  echo "Chromium: installed"; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  && echo "Chromium: installed from the OS packages"; \
	fi

# templates/plots.html, the page of `dvc plots show/diff` with Vega inlined, from templates/plots.src.html
# and the npm packages pinned in templates/build_plots_page.py (needs npm and the registry)
plots-page: $(INSTALLED) ## rebuild templates/plots.html (Vega inlined) from the pinned npm packages
	$(RUN) python templates/build_plots_page.py

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

# the whole team stack on this machine, on loopback; the client settings go to .team/client.env (mode 600)
team-up: $(INSTALLED) team-setup ## the whole team stack on this machine, on loopback; client settings in .team/client.env
	$(RUN) python -m team.stack up

team-down: $(INSTALLED) ## stop the team stack (its data stays in .team/)
	$(RUN) python -m team.stack down

# SWEEP=studies/sweep/sweep.yaml by default; with the settings of `python -m team.stack env` exported
SWEEP ?= studies/sweep/sweep.yaml
team-study: $(INSTALLED) ## a sweep (SWEEP=studies/sweep/sweep.yaml) as Ray tasks on the team stack
	$(RUN) python -m team.study submit --sweep $(SWEEP)

team-collect: $(INSTALLED) ## pull the team study's experiments and write its report, failed runs as rows
	$(RUN) python -m team.study collect --sweep $(SWEEP)
