"""refinery's benchmarks: targeted data against random augmentation and more steps, where a round's time goes,
and how analysis and ingest scale. `bench/run` runs them all and writes docs/benchmarks.md."""
