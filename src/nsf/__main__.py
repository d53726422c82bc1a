"""``python -m nsf``: the ``nsf`` command, for a given interpreter (e.g. a venv that is not activated)."""
from nsf.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
