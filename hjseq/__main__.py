import sys

from hjseq.cli import main

sys.exit(main())
