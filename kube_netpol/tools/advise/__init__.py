"""`kube-netpol advise`: the command line over kube_netpol.advise, and ``--verify`` through the offline engine."""
