"""`kube-netpol explain`: one connection replayed through the evaluators, step by step."""
