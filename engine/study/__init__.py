"""Whole studies from one config: the plan of jobs, its estimates, launchers and the runner (issue F)."""
