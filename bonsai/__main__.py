import sys

from bonsai.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
