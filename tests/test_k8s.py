"""launch/k8s: the manifests and the Dockerfile, read and checked for what
makes a multi-host run work (fast). No cluster, no image build here: the two
pods of gpu-jobset.yaml run for real, with exactly the environment it gives
them, in test_multiprocess_faults.py (slow tier)."""

import math
import pathlib
import re

import pytest
import yaml

from configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]
K8S = REPO / 'launch' / 'k8s'
MANIFESTS = sorted(K8S.glob('*.yaml'))
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def jobset(path):
  [doc] = list(yaml.safe_load_all(path.read_text()))
  assert doc['apiVersion'] == 'jobset.x-k8s.io/v1alpha2'
  assert doc['kind'] == 'JobSet'
  return doc


def pod_of(doc):
  """(the replicated job, its Job spec, its pod spec, the container)."""
  [rjob] = doc['spec']['replicatedJobs']
  job = rjob['template']['spec']
  pod = job['template']['spec']
  [container] = pod['containers']
  return rjob, job, pod, container


def env_of(container):
  return {e['name']: e for e in container['env']}


def coordinator_address(doc) -> str:
  """Pod 0's DNS name under JobSet's headless service, and the port."""
  rjob, _, _, container = pod_of(doc)
  return env_of(container)['JAX_COORDINATOR_ADDRESS']['value']


def pod_environment(path, index, coordinator):
  """The variables the manifest gives pod `index` (the completion index as
  the downward API resolves it), with JAX_COORDINATOR_ADDRESS replaced by
  `coordinator`, plus the image's own (the Dockerfile's ENV, /app being
  the code's directory)."""
  _, _, _, container = pod_of(jobset(path))
  env = {}
  for name, entry in env_of(container).items():
    if 'value' in entry:
      env[name] = entry['value']
    else:
      assert entry['valueFrom']['fieldRef']['fieldPath'] == INDEX_FIELD, name
      env[name] = str(index)
  env['JAX_COORDINATOR_ADDRESS'] = coordinator
  return {**dockerfile_env(), **env}


def dockerfile_env():
  env = {}
  for line in (K8S / 'Dockerfile').read_text().splitlines():
    if line.startswith('ENV '):
      env.update(kv.split('=', 1) for kv in line.split()[1:])
  return {k: v.replace('/app', str(REPO)) for k, v in env.items()}


def command_of(path):
  _, _, _, container = pod_of(jobset(path))
  return container['command']


@pytest.mark.parametrize('path', MANIFESTS, ids=lambda p: p.name)
def test_every_pod_is_one_process_of_one_job(path):
  """completions = parallelism = JAX_NUM_PROCESSES, an Indexed Job, the
  process id from the completion index, the coordinator at pod 0's DNS name
  (its port exposed), and alexnet_jax's own start."""
  doc = jobset(path)
  rjob, job, pod, container = pod_of(doc)
  env = env_of(container)
  n = int(env['JAX_NUM_PROCESSES']['value'])
  assert rjob['replicas'] == 1
  assert job['completionMode'] == 'Indexed'
  assert job['completions'] == job['parallelism'] == n > 1
  assert env['JAX_PROCESS_ID']['valueFrom']['fieldRef']['fieldPath'] == \
      INDEX_FIELD
  network = doc['spec']['network']
  assert network['enableDNSHostnames'] and network['publishNotReadyAddresses']
  subdomain = network.get('subdomain', doc['metadata']['name'])
  host, port = coordinator_address(doc).rsplit(':', 1)
  assert host == f"{doc['metadata']['name']}-{rjob['name']}-0-0.{subdomain}"
  assert int(port) in [p['containerPort'] for p in container['ports']]
  assert container['command'] == ['python', '-m', 'alexnet_jax.main']


@pytest.mark.parametrize('path', MANIFESTS, ids=lambda p: p.name)
def test_a_failed_pod_restarts_all_and_sigterm_has_time_to_save(path):
  """Any pod failing (143 after SIGTERM, 75 after losing another) fails the
  Job at once and JobSet recreates every pod, which resume; the grace period
  covers a step and a checkpoint write."""
  doc = jobset(path)
  _, job, pod, _ = pod_of(doc)
  assert job['backoffLimit'] == 0
  assert pod['restartPolicy'] == 'Never'
  assert doc['spec']['failurePolicy']['maxRestarts'] >= 10
  assert pod['terminationGracePeriodSeconds'] >= 120


@pytest.mark.parametrize('path', MANIFESTS, ids=lambda p: p.name)
def test_arguments_name_a_config_a_shared_workdir_and_known_fields(path):
  _, _, pod, container = pod_of(jobset(path))
  args = dict(a.split('=', 1) for a in container['args'])
  assert (REPO / args['--config']).is_file()
  fields = default.get_config()
  for key in args:
    if key.startswith('--config.'):
      assert key[len('--config.'):] in fields, key
  workdir = args['--workdir']
  if not workdir.startswith('gs://'):  # Else a volume every pod mounts.
    mounts = {m['mountPath']: m['name'] for m in container['volumeMounts']}
    [mount] = [m for m in mounts if workdir.startswith(m + '/')]
    volumes = {v['name']: v for v in pod['volumes']}
    assert 'persistentVolumeClaim' in volumes[mounts[mount]]


def test_gpu_pods_take_whole_nodes_and_tpu_pods_a_whole_slice():
  """GPU: every GPU of the node. TPU: hosts x chips per host = the slice's
  chips (its topology), all pods on one node pool."""
  _, _, _, gpu = pod_of(jobset(K8S / 'gpu-jobset.yaml'))
  assert gpu['resources']['limits']['nvidia.com/gpu'] == 8
  doc = jobset(K8S / 'tpu-jobset.yaml')
  _, job, pod, tpu = pod_of(doc)
  topology = pod['nodeSelector']['cloud.google.com/gke-tpu-topology']
  chips = math.prod(int(x) for x in topology.split('x'))
  assert chips == job['parallelism'] * tpu['resources']['limits'][
      'google.com/tpu']
  assert doc['metadata']['annotations'][
      'alpha.jobset.sigs.k8s.io/exclusive-topology'] == \
      'cloud.google.com/gke-nodepool'
  assert all(a.split('=', 1)[1].startswith('gs://') for a in tpu['args']
             if a.startswith(('--workdir', '--config.tfds_data_dir')))


def test_dockerfile_installs_the_pinned_training_requirements():
  """The image: requirements-train.txt, then the accelerator's JAX at the
  version requirements-train.txt pins; the JAX build a build argument."""
  text = (K8S / 'Dockerfile').read_text()
  pinned = re.search(r'^jax\[cpu\]==(\S+)$',
                     (REPO / 'requirements-train.txt').read_text(), re.M)
  assert re.search(rf'^ARG JAX_VERSION={re.escape(pinned.group(1))}$', text,
                   re.M)
  assert re.search(r'^ARG JAX_EXTRA=cuda13$', text, re.M)
  assert ('RUN pip install --no-cache-dir -r requirements-train.txt '
          '"jax[${JAX_EXTRA}]==${JAX_VERSION}"') in text
  base = re.search(r'^FROM (\S+)$', text, re.M).group(1)
  assert re.fullmatch(r'python:3\.1[1-9]\.\d+-slim-\w+', base), base
  assert re.search(r'^WORKDIR /app$', text, re.M)
  assert dockerfile_env()['PYTHONPATH'] == str(REPO)
  assert dockerfile_env()['PYTHONUNBUFFERED'] == '1'
  assert '--build-arg JAX_EXTRA=tpu' in text
  ignored = (REPO / '.dockerignore').read_text().split()
  assert {'.git', '.venv', 'workdirs'} <= set(ignored)


def test_the_pod_environment_is_read_as_kubernetes_gives_it():
  env = pod_environment(K8S / 'gpu-jobset.yaml', 1, '127.0.0.1:1234')
  assert env['JAX_PROCESS_ID'] == '1' and env['JAX_NUM_PROCESSES'] == '2'
  assert env['JAX_COORDINATOR_ADDRESS'] == '127.0.0.1:1234'
  assert env['PYTHONPATH'] == str(REPO)
