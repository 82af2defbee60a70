"""Slurm: HPC allocations as pilot jobs, opportunistic backfill, the queue as demand, usage from sacct/jobcomp."""
