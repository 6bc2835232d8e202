"""launch/tpu_vm.py's parts; the standard library only (it runs next to
gcloud on a laptop, not on a worker)."""
