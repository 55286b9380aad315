"""The `velo` command."""
