"""`python -m reminder`: the same as the `reminder` console script."""

from reminder.cli import main

if __name__ == "__main__":
    main()
