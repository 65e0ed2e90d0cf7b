"""Discrete-event simulator of an inference fleet (floor 4).

Runs the routing strategies of :mod:`infermesh.serve.strategies` against modelled GPUs,
networks, signals and workloads. Start with :mod:`sim.config` (every assumption is a key),
:func:`sim.engine.simulate` (one run) and :func:`sim.runner.run_scenario` (a comparison);
``docs/SIMULATOR.md`` describes the model and its outputs.
"""
