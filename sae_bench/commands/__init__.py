"""The `sae-bench` commands, one module per command or group of commands. `sae_bench.cli` declares their options and
imports the one module a command line runs, when it runs it."""
