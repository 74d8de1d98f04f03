"""Entry point of the one-file executable (packaging/build_onefile.py): the `edgeproxy`
command, exactly as the pip-installed script runs it."""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
