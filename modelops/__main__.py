"""`python -m modelops ...` (also what `accelerate launch -m modelops` runs)."""

from modelops.cli.main import main

if __name__ == "__main__":
    main()
