"""``python -m mucosa``: the ``mucosa`` command."""

from mucosa.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
