"""The vv-test tasks: fixed models and recipes, and the data fixes that make them train."""
