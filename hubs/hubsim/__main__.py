"""`python -m hubs.hubsim`: run the reference hub without Django."""

from .cli import main

main()
