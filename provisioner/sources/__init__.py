"""Workload sources: where pending work comes from (simulated traces, Slurm queues, burst requests)."""
