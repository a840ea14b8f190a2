import sys

from tinytlc.cli import main

sys.exit(main())
