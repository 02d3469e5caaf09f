"""The studies: one folder each, studies/<name>/, holding everything of that study and nothing else.

    studies/<name>/README.md     the question, the command, the answer in a line, where the numbers are
    studies/<name>/sweep.yaml    its cells x seeds (a study that trains runs); `make study NAME=<name>`
    studies/<name>/analysis.py   its own analysis, if it has one: `make study` runs it after the report
    studies/<name>/results/      its committed rows, histories, tables and figures

A study imports the engines and the shared analysis (study/) and the library (spikelab/), never
another study: one study may read another's committed result files (the replication reads the
evidence study's rows), not its code. studies/README.md lists them.
"""
