"""`python -m sslall` runs the CLI."""

from sslall.cli import main

if __name__ == "__main__":
    main()
