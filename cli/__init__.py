"""The `modelops` command line (installed as modelops.cli). Thin: parse, call one library function, print."""
