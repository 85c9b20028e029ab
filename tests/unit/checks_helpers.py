"""What tests/unit/test_checks.py and tests/unit/test_check_kinds.py share."""

# A password in targets: it must never appear in an error.
SECRET = "s3cr3t-Pa55"
