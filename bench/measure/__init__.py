"""What a training step costs, per method, measured in one process (`safbench overhead`).

Three benchmarks, each a list of flat rows (bench.measure.rows) for a CSV:

- steps (`measure_steps`): the steady-state step of every method on one model and batch shape, timed in
  interleaved rounds with the ratio to SGD taken inside each round;
- loop (`measure_loop`): images/s of `method.step` on pre-made batches against the run's real epoch loop
  (bench.loop), interleaved the same way;
- store (`store_report`): SAF store sizes from the formula, the measured cost of its reads and writes
  against the official design, and the trajectory-loss error of fp16/bf16 storage.

timing.py owns the clocks and rounds, batches.py the synthetic data, methods.py how methods are built and
what they keep in memory, memory.py the memory budgets, config.py what one measurement is, cli.py the command.
"""
