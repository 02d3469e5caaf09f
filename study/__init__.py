"""The engines that run studies and the analysis every study shares; the studies live in studies/.

Engines: sweep (a study's sweep.yaml -> named runs), dvc_calls (every `dvc`/`git` call and parse)
and lost_runs (one DVC experiment per run), population and population_engine (a cell's seeds
trained together), replay (counterfactual replays of a run's spike). Shared analysis: report (a
sweep's rows, tables and figures), stats, tables, figures, threshold_free, predictors.
architectures: the foreign networks the spike doctor is tested on. Each study (studies/<name>/)
imports these; these import no study and no tool (tools/). Like them, a client of the pipeline:
nothing in spikelab imports it, so editing it never re-runs a stage.
"""
