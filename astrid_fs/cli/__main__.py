import sys

from astrid_fs.cli.main import main

sys.exit(main())
