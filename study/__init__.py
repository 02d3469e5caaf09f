"""The study: a client of the pipeline that runs it many times as DVC experiments and reports.

sweep (study/sweep.yaml -> named runs) -> experiments (every `dvc`/`git` call and parse) ->
report / replay (tables.py, figures.py). It imports the library (spikelab) for params and
rules; nothing in spikelab imports it, so editing the study never re-runs a stage.
"""
