import sys

from streamaug.cli import main

sys.exit(main())
