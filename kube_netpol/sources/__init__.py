"""Where the cluster state comes from: the Kubernetes API or manifests on disk."""
