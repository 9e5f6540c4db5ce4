"""Least-privilege policies proposed for the user: from observed flows and from workloads.

Pure logic (objects and records in, proposals and policy objects out), shared
by `kube-netpol advise` (kube_netpol.tools.advise, offline) and by the
in-cluster policy controller (``controller``, the one I/O shell here). This
package sits above the agent and below the tools: it ships in the image, for
the controller's Deployment, but nothing that runs on a node imports it.

- ``model``: workloads, selectors, peers, ports and the per-workload proposal;
- ``kinds``: the kinds advise reads (Deployments ... CronJobs, Services) as KindSpecs;
- ``owners``: a pod's controller owner to its workload, and the labels that select it;
- ``flows``: decision records read back; ``from_flows`` / ``from_workloads``: proposals;
- ``render``: NetworkPolicy or ClusterNetworkPolicy objects, deterministic YAML;
- ``owned``, ``writer``, ``controller`` (and ``controller_cli``): the policy controller's
  ownership and plan, its bounded writes, its loop.
"""
