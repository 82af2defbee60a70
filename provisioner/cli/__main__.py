"""`python -m provisioner.cli`: the same command as `provisioner` (tests run it from a source tree)."""

from provisioner.cli import main

main()
