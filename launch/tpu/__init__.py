"""The Cloud TPU VM launcher behind launch/tpu_vm.py, at its seams: the
command line (options), how commands run and time passes (runner), the
decision log and the retry and restart budgets (decisions), the VM (vm),
what runs on its workers (workers) and the run itself (supervise).

Standard library only: it runs on a laptop next to gcloud, not on a worker."""
