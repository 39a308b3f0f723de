"""The gateway's benchmark suite (`make bench`): scenarios S1-S7 of issue 8 and their budgets.

Each scenario runs twice in one invocation, first straight at a fast fake upstream and
then through the whole gateway (api, worker and billing, with auth, rate limits and
billing on), so that what the gateway adds is a difference between two runs on the same
machine at the same moment. Modules:

    stack.py       PostgreSQL database, bundled Redis, fake upstream, the three services
    procs.py       pinned child processes; RSS and CPU time from /proc
    loadgen.py     drives node/loadgen.mjs (closed, open loop, streams, hold, flood)
    scenarios.py   S1-S7, and F: the same loads through the design floor
    floor.py       the design floor: the required shape with none of the features
    budgets.py     the budgets, as PASS/FAIL verdicts
    profiling.py   py-spy flame graphs and function rankings during S1
    report.py      bench-results/<timestamp>.json and .md
"""
