import sys

from nsf_lab.cli import main

sys.exit(main())
