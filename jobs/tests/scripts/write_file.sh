#!/bin/sh
# Test helper for jobs/tests/test_runner.py: writes its second argument into the file named by its first.
printf '%s\n' "$2" > "$1"
echo "wrote $1"
