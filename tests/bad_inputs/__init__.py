"""A generated corpus of hostile inputs (see README.md and generate.py) for tests/test_bad_inputs.py."""
