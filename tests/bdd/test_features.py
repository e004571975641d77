"""Every feature file under features/ runs as tests, one per scenario (and example row)."""

from pytest_bdd import scenarios

scenarios("features")
