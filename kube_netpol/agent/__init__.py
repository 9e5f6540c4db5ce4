"""The agent process: verdict loop, control loop and the `run` command."""
