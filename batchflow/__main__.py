import sys

from batchflow.cli import main

sys.exit(main())
