"""``python -m nsf_lab``: the ``nsf`` command, for a given interpreter (e.g. a venv that is not activated)."""
from nsf_lab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
