#!/usr/bin/env bash
# Install what the SLURM tests (tests/bench/gridsearch/slurm) need: Debian's slurmctld, slurmd, slurm-client and
# munge. Idempotent; returns at once when everything is already installed. Run as root (CI).
# The tests start their own single-node cluster in a temp folder (tests/bench/gridsearch/slurm/cluster.py): this
# script only installs packages, configures and starts nothing.
set -euo pipefail

packages=(slurmctld slurmd slurm-client munge)
have_all=1
for bin in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/bin/sbatch /usr/bin/srun; do
    [[ -x "$bin" ]] || have_all=0
done
if [[ "$have_all" == 1 ]]; then
    echo "slurm-setup: already installed ($(/usr/sbin/slurmctld -V))"
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "slurm-setup: needs root to apt-get install ${packages[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# --no-install-recommends keeps it small; the packages' own services are not started here
# (a container has no systemd; the tests run the daemons themselves).
apt-get install -y -q --no-install-recommends "${packages[@]}"
echo "slurm-setup: installed $(/usr/sbin/slurmctld -V)"
