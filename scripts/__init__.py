"""The command-line scripts (run them as files); a package so that tests import them as modules."""
