import sys

from kube_netpol.cli import main

sys.exit(main())
