"""The reference stack as local processes, without Docker (`python -m native --help`)."""
