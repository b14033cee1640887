"""What runs in a lent GPU slot: the prepared device check (`check`: parity, CUDA tests and
benchmarks on the GPU) and the training sprint (`sprint`, with its packed inputs in
`sprint_pack`). Both have a CPU dry run that CI exercises; docs/training.md and
docs/benchmarks.md are the user's pages."""
