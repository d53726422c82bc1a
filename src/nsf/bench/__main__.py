import sys

from nsf.cli import main

sys.exit(main())
