"""The Redis job store: every key, the Lua scripts and their runner, the deployed APIs and their
code, and each job's log."""
