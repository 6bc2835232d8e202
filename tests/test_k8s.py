"""launch/k8s: the manifests and the Dockerfile checked for what makes a
first run on GKE work (fast). No cluster and no image build here, so each
check stands in for one part of the cluster, as strict as that part:
the API server's schema (the JobSet CRD, vendored) and admission
(tests/k8s_schema.py, tests/k8s_admission.py); the controllers' labels and
the kubelet's environment (tests/k8s_render.py), fed to the trainer's own
start-up parsing; the Job and JobSet controllers' failure handling
(tests/k8s_failures.py). The two pods of gpu-jobset.yaml also run for real,
with the environment rendered here, in test_multiprocess_faults.py (slow).
"""

import json
import math
import re
import subprocess
import sys

import pytest

from alexnet_jax.errors import DistributedError
from alexnet_jax.runtime import accelerator, distributed
from tests import k8s_admission, k8s_failures, k8s_render, k8s_schema
from tests.k8s_failures import FailedPod
from tests.k8s_render import K8S, MANIFESTS, REPO, jobset, pod_of

DOCS = REPO / 'docs' / 'clusters.md'
PLATFORM = {'gpu-jobset.yaml': 'gpu', 'tpu-jobset.yaml': 'tpu'}
JOBSET_RELEASE = re.compile(
    r'kubectl apply --server-side -f\s+(?:#\s*)?https://github\.com/'
    r'kubernetes-sigs/jobset/releases/download/v(\d+)\.(\d+)\.(\d+)/'
    r'manifests\.yaml')
by_name = pytest.mark.parametrize('path', MANIFESTS, ids=lambda p: p.name)


def env_entries(container):
  return {e['name']: e for e in container['env']}


def num_processes(doc) -> int:
  return int(env_entries(pod_of(doc)[3])['JAX_NUM_PROCESSES']['value'])


def kubernetes_section() -> str:
  text = DOCS.read_text()
  return text[text.index('### Kubernetes'):text.index('### N processes')]


# --- Schema and admission ----------------------------------------------------


@by_name
def test_every_document_validates_against_the_real_jobset_crd(path):
  """JobSet v0.10.0's CRD schema, unknown fields refused as under kubectl's
  strict field validation; the ServiceAccount's few fields likewise."""
  for doc in k8s_render.documents(path):
    assert k8s_schema.errors(doc) == [], doc['kind']


@pytest.mark.parametrize('where, field', [
    (('spec', 'replicatedJobs', 0, 'template', 'spec', 'template', 'spec'),
     'restartPolicyy'),
    (('spec',), 'failurePolicyy'),
    (('spec', 'failurePolicy', 'rules', 0), 'onJobFailureMessagePattern'),
    (('spec', 'replicatedJobs', 0, 'template', 'spec', 'podFailurePolicy',
      'rules', 0, 'onExitCodes'), 'containername'),
    (('metadata',), 'annotation'),
], ids=['pod-spec', 'jobset-spec', 'failure-rule', 'exit-codes', 'metadata'])
def test_the_schema_check_refuses_a_misspelled_field(where, field):
  doc = jobset(K8S / 'gpu-jobset.yaml')
  node = doc
  for key in where:
    node = node[key]
  node[field] = node.get(field[:-1], 'Never')
  [error] = k8s_schema.errors(doc)
  assert f"'{field}' was unexpected" in error, error


def test_the_schema_check_refuses_a_misspelled_service_account_field():
  [account] = [d for d in k8s_render.documents(K8S / 'tpu-jobset.yaml')
               if d['kind'] == 'ServiceAccount']
  account['automountServiceAccountTokens'] = False
  [error] = k8s_schema.errors(account)
  assert 'automountServiceAccountTokens' in error


@by_name
def test_jobset_webhook_and_job_validation_accept_them(path):
  doc = jobset(path)
  assert k8s_admission.jobset_errors(doc) == []
  assert k8s_admission.job_errors(pod_of(doc)[1]) == []


def test_the_admission_checks_refuse_what_the_cluster_would():
  doc = jobset(K8S / 'gpu-jobset.yaml', name='x' * 50)
  errors = ' '.join(k8s_admission.jobset_errors(doc))
  assert 'pod name' in errors and 'not a valid label value' in errors
  _, job, pod, _ = pod_of(doc)
  job['podFailurePolicy']['rules'][0]['onExitCodes']['values'] = [2, 1]
  pod['restartPolicy'] = 'OnFailure'
  errors = ' '.join(k8s_admission.job_errors(job))
  assert 'must be unique and ordered' in errors and 'Never' in errors


# --- The pods' start ---------------------------------------------------------


@by_name
def test_every_pod_is_one_process_of_one_indexed_job(path):
  """completions = parallelism = JAX_NUM_PROCESSES, an Indexed Job, the
  process id from the completion index, the coordinator's port exposed, and
  alexnet_jax's own start."""
  doc = jobset(path)
  rjob, job, _, container = pod_of(doc)
  n = num_processes(doc)
  assert rjob['replicas'] == 1
  assert job['completionMode'] == 'Indexed'
  assert job['completions'] == job['parallelism'] == n > 1
  network = doc['spec']['network']
  assert network['enableDNSHostnames'] and network['publishNotReadyAddresses']
  assert doc['spec']['coordinator'] == {
      'replicatedJob': rjob['name'], 'jobIndex': 0, 'podIndex': 0}
  port = int(env_entries(container)['JAX_COORDINATOR_ADDRESS']['value']
             .rsplit(':', 1)[1])
  assert port in [p['containerPort'] for p in container['ports']]
  assert container['command'] == ['python', '-m', 'alexnet_jax.main']


@by_name
@pytest.mark.parametrize('name', [None, 'second-try'])
def test_each_pod_starts_as_its_process_through_the_trainers_parsing(path,
                                                                     name):
  """Each pod's environment, rendered as Kubernetes renders it, read by the
  trainer's own start-up (plan_start): the coordinator is pod 0 of this
  JobSet, whatever its name."""
  doc = jobset(path, name)
  rjob, _, _, _ = pod_of(doc)
  js = doc['metadata']['name']
  n = num_processes(doc)
  for i in range(n):
    env, _, _ = k8s_render.render(doc, i)
    assert distributed.plan_start(environ=env) == distributed.Start(
        'explicit', f"{js}-{rjob['name']}-0-0.{js}:8476", n, i)


@by_name
def test_a_renamed_copy_has_its_own_coordinator_and_workdir(path):
  def seen(name):
    env, _, args = k8s_render.render(path, 0, name)
    workdir = [a for a in args if a.startswith('--workdir=')]
    return env['JAX_COORDINATOR_ADDRESS'], workdir
  first, second = seen(None), seen('second-try')
  assert first[0] != second[0] and first[1] != second[1]
  assert second[1][0].endswith('/second-try')
  assert 'second-try-' in second[0]


@by_name
def test_without_the_coordinator_annotation_no_pod_starts(path):
  """A JobSet controller that sets no coordinator annotation (older than
  v0.6.0, or spec.coordinator removed) leaves ':8476': one error line."""
  doc = jobset(path)
  del doc['spec']['coordinator']
  env, _, _ = k8s_render.render(doc, 1)
  assert env['JAX_COORDINATOR_ADDRESS'] == ':8476'
  with pytest.raises(DistributedError, match="':8476' is not HOST:PORT"):
    distributed.plan_start(environ=env)


@pytest.mark.parametrize('text, want', [
    ('$(A):1', 'x:1'), ('$$(A)', '$(A)'), ('$(MISSING)', '$(MISSING)'),
    ('$(A', '$(A'), ('a$', 'a$'), ('$A', '$A'), ('$$$(A)', '$x'),
    ('$(B)/$(A)', '$(B)/x'),
])
def test_variable_expansion_follows_kubernetes(text, want):
  """The cases of Kubernetes' expansion tests (expand_test.go): known
  references replaced, unknown and unclosed ones kept, $$ an escape."""
  assert k8s_render.expand(text, {'A': 'x'}) == want


def test_a_reference_sees_only_the_variables_defined_before_it():
  container = {'env': [{'name': 'B', 'value': '$(A)-b'},
                       {'name': 'A', 'value': 'a'},
                       {'name': 'C', 'value': '$(A)-c'}]}
  assert k8s_render.container_env(container, {}) == {
      'B': '$(A)-b', 'A': 'a', 'C': 'a-c'}


@by_name
def test_the_arguments_parse_with_the_trainers_flags(path, tmp_path):
  """Pod 0's rendered command line, parsed by the trainer's own flag parsing
  (absl and the config file) in a fresh interpreter: the platform of the
  hardware, a shared workdir named after the JobSet, known fields."""
  env, _, args = k8s_render.render(path, 0)
  probe = ('import json, sys; from alexnet_jax import main; '
           'main.parse_flags(["main", *sys.argv[1:]]); F = main.FLAGS; '
           'print(json.dumps({"workdir": F.workdir, "platform": '
           'F.config.platform, "tfds": F.config.tfds_data_dir, "timeout": '
           'F.coordinator_timeout}))')
  result = subprocess.run([sys.executable, '-c', probe, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  flags = json.loads(result.stdout.splitlines()[-1])
  assert flags['platform'] == PLATFORM[path.name]
  assert flags['workdir'].endswith('/' + env['JOBSET_NAME'])
  assert flags['tfds'] and flags['timeout'] >= 900
  _, _, pod, container = pod_of(jobset(path))
  if flags['workdir'].startswith('gs://'):
    assert flags['tfds'].startswith('gs://')
  else:  # A ReadWriteMany claim every pod mounts.
    mounts = {m['mountPath']: m['name'] for m in container['volumeMounts']}
    [mount] = [m for m in mounts if flags['workdir'].startswith(m + '/')]
    volumes = {v['name']: v for v in pod['volumes']}
    assert 'persistentVolumeClaim' in volumes[mounts[mount]]
    assert flags['tfds'].startswith(mount + '/')


# --- Failures ---------------------------------------------------------------


def failures_of(path, *batches, status=None):
  """The JobSet's status after the Job controller has seen each batch of
  failed pods, in order (a batch: one sync)."""
  doc = jobset(path)
  status = status or k8s_failures.JobSetStatus()
  for batch in batches:
    k8s_failures.outcome(doc, batch, status)
  return status


@by_name
@pytest.mark.parametrize('failed', [
    [FailedPod(1, 2)], [FailedPod(0, 2), FailedPod(1, 75)]],
    ids=['alone', 'with-others'])
def test_a_usage_error_fails_the_jobset_at_once(path, failed):
  status = failures_of(path, failed)
  assert status.failed == 'FailJobSetAction' and status.restarts == 0


@by_name
def test_a_preempted_pod_restarts_all_uncounted(path):
  """Pod 1's node is preempted (DisruptionTarget); through JAX's preemption
  sync every pod exits 143. Seen together, the Job fails by podFailurePolicy
  and JobSet restarts all without counting, as often as it happens."""
  batch = [FailedPod(0, 143), FailedPod(1, 143, ('DisruptionTarget',))]
  status = failures_of(path, *[batch] * 100)
  assert (status.failed, status.restarts, status.counted) == (None, 100, 0)


@by_name
def test_a_disrupted_pod_seen_after_the_others_counts(path):
  """The race the docs state: when the healthy pods' exit 143 reaches the
  Job controller in a sync before the disrupted pod's failure, the Job has
  already failed by its backoff limit: a counted restart."""
  status = failures_of(path, [FailedPod(0, 143)])
  assert (status.restarts, status.counted) == (1, 1)


@by_name
@pytest.mark.parametrize('code', [75, 143, 1, 137])
def test_other_failures_restart_all_counted(path, code):
  status = failures_of(path, [FailedPod(1, code)])
  assert (status.failed, status.restarts, status.counted) == (None, 1, 1)


@by_name
def test_a_repeating_crash_fails_after_max_restarts(path):
  max_restarts = jobset(path)['spec']['failurePolicy']['maxRestarts']
  assert 3 <= max_restarts <= 20
  status = failures_of(path, *[[FailedPod(0, 1)]] * (max_restarts + 1))
  assert status.failed == 'ReachedMaxRestarts'
  assert status.restarts == status.counted == max_restarts


@by_name
def test_sigterm_has_time_to_save(path):
  _, job, pod, _ = pod_of(jobset(path))
  assert job['backoffLimit'] == 0 and pod['restartPolicy'] == 'Never'
  assert pod['terminationGracePeriodSeconds'] >= 120


# --- Nodes, image, security --------------------------------------------------


def quantity(text) -> float:
  """A Kubernetes quantity as a number (cores, or bytes)."""
  suffixes = {'m': 1e-3, 'Ki': 2**10, 'Mi': 2**20, 'Gi': 2**30, 'Ti': 2**40,
              'k': 1e3, 'M': 1e6, 'G': 1e9, 'T': 1e12}
  number, unit = re.fullmatch(r'([0-9.]+)([A-Za-z]*)', str(text)).groups()
  return float(number) * suffixes.get(unit, 1)


def gke_allocatable(vcpus, memory_bytes):
  """What GKE leaves to pods on a node (GKE docs, "Plan node sizes":
  CPU 6% of the first core, 1% of the next, 0.5% of the next 2, 0.25%
  above 4; memory 25% of the first 4 GiB, 20% of the next 4, 10% of the
  next 8, 6% of the next 112, 2% above 128, plus a 100 MiB eviction
  threshold), less 2 cores and 4 GiB for GKE's node daemons (an allowance,
  not a measurement)."""
  cpu = vcpus - (0.06 + 0.01 + 0.005 * 2 + 0.0025 * max(vcpus - 4, 0))
  gib = memory_bytes / 2**30
  tiers = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (math.inf, 0.02)]
  reserved, rest = 0.1, gib
  for size, share in tiers:
    reserved += min(rest, size) * share
    rest = max(rest - size, 0)
  return cpu - 2, (gib - reserved - 4) * 2**30


@pytest.mark.parametrize('path, vcpus, memory_gb', [
    (K8S / 'gpu-jobset.yaml', 96, 680),
    (K8S / 'gpu-jobset.yaml', 208, 1872),
    (K8S / 'tpu-jobset.yaml', 112, 192),
], ids=['a2-highgpu-8g', 'a3-highgpu-8g', 'ct5lp-hightpu-4t'])
def test_pods_are_guaranteed_and_fit_their_node(path, vcpus, memory_gb):
  """requests = limits for cpu and memory (Guaranteed QoS: evicted last),
  within what GKE leaves on the node."""
  resources = pod_of(jobset(path))[3]['resources']
  assert resources['requests'] == resources['limits']
  cpu, memory = gke_allocatable(vcpus, memory_gb * 1e9)
  assert quantity(resources['limits']['cpu']) <= cpu
  assert quantity(resources['limits']['memory']) <= memory


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


def test_the_tpu_pods_run_as_the_service_account_of_the_bucket_binding():
  docs = k8s_render.documents(K8S / 'tpu-jobset.yaml')
  [account] = [d for d in docs if d['kind'] == 'ServiceAccount']
  pod = pod_of(jobset(K8S / 'tpu-jobset.yaml'))[2]
  assert pod['serviceAccountName'] == account['metadata']['name']
  member = ('principal://iam.googleapis.com/projects/PROJECT_NUMBER/'
            'locations/global/workloadIdentityPools/PROJECT_ID.svc.id.goog/'
            f"subject/ns/NAMESPACE/sa/{account['metadata']['name']}")
  docs_text = kubernetes_section()
  assert member in docs_text and 'roles/storage.objectUser' in docs_text


def dockerfile() -> str:
  return (K8S / 'Dockerfile').read_text()


def test_the_gpu_image_finds_the_driver_gke_mounts():
  """GKE mounts the node's driver at /usr/local/nvidia and puts nothing on
  the library path; the NVIDIA container toolkit reads the NVIDIA_*."""
  env = k8s_render.dockerfile_env()
  path = env['LD_LIBRARY_PATH'].split(':')
  assert accelerator.GKE_DRIVER_DIR in path and '/usr/local/nvidia/lib' in path
  assert env['NVIDIA_VISIBLE_DEVICES'] == 'all'
  assert set(env['NVIDIA_DRIVER_CAPABILITIES'].split(',')) >= {
      'compute', 'utility'}


@by_name
def test_pods_run_as_the_images_non_root_user(path):
  user = re.search(r'^USER (\d+):(\d+)$', dockerfile(), re.M)
  assert user and int(user.group(1)) > 0
  _, _, pod, container = pod_of(jobset(path))
  security = pod['securityContext']
  assert security['runAsNonRoot'] is True
  assert (security['runAsUser'], security['runAsGroup'], security['fsGroup']) \
      == (int(user.group(1)), int(user.group(2)), int(user.group(2)))
  assert container['securityContext']['allowPrivilegeEscalation'] is False


def test_dockerfile_installs_the_pinned_training_requirements():
  """The image: requirements-train.txt, then the accelerator's JAX at the
  version requirements-train.txt pins; the JAX build a build argument."""
  text = dockerfile()
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
  env = k8s_render.dockerfile_env()
  assert env['PYTHONPATH'] == str(REPO) and env['PYTHONUNBUFFERED'] == '1'
  assert '--build-arg JAX_EXTRA=tpu' in text
  ignored = (REPO / '.dockerignore').read_text().split()
  assert {'.git', '.venv', 'workdirs'} <= set(ignored)


# --- What the user edits ----------------------------------------------------

# Docker's reference grammar (github.com/distribution/reference, regexp.go).
_COMPONENT = r'[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*'
_DOMAIN = (r'(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])'
           r'(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*'
           r'(?::[0-9]+)?')
IMAGE_REFERENCE = re.compile(
    rf'^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*'
    r'(?::[\w][\w.-]{0,127})?'
    r'(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*'
    r':[0-9a-fA-F]{32,})?$')
# Cloud Storage bucket names (its "Bucket naming" rules, without dots).
BUCKET = re.compile(r'^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$')
DNS1123_SUBDOMAIN = re.compile(
    r'^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')


def registry_host(image):
  """The registry host a reference names in full (a first component with
  a '.' or a ':port'), else None: no host that resolves."""
  first, _, rest = image.partition('/')
  return first if rest and ('.' in first or ':' in first) else None


def test_the_reference_and_bucket_rules_refuse_the_old_placeholders():
  """'REGISTRY/...' parses (Docker takes an upper-case first component for
  a host), but names no registry that resolves; a digest is valid."""
  assert registry_host('REGISTRY/alexnet-jax:gpu') is None
  assert IMAGE_REFERENCE.match('us-docker.pkg.dev/p/r/alexnet-jax@sha256:'
                               + 'ab' * 32)
  assert not BUCKET.match('BUCKET') and BUCKET.match('example-alexnet-bucket')


def edited(path):
  """{key: value} of each line marked `# EDIT`, and the header comment."""
  lines = path.read_text().splitlines()
  header = '\n'.join(l for l in lines[:next(
      i for i, l in enumerate(lines) if not l.startswith('#'))])
  marked = {}
  for line in lines:
    if re.search(r'#\s*EDIT\b', line) and not line.startswith('#'):
      content = line.split('#')[0].strip()
      content = content[2:] if content.startswith('- ') else content
      key, _, value = content.partition('=' if content.startswith('--')
                                        else ':')
      marked.setdefault(key.strip(), []).append(value.strip())
  return header, marked


@by_name
def test_every_value_to_edit_is_valid_marked_and_listed(path):
  """Pasted as is, each value the user must change is still valid (a
  Docker reference, a bucket, a claim, a name), marked `# EDIT`, and the
  header lists it."""
  header, marked = edited(path)
  _, _, pod, container = pod_of(jobset(path))
  assert marked['image'] == [container['image']]
  assert IMAGE_REFERENCE.match(container['image'])
  assert registry_host(container['image'])
  assert container['imagePullPolicy'] == 'Always'
  assert 'image:' in header and '@sha256:' in header
  for key, value in pod['nodeSelector'].items():
    assert marked[key] == [value] and k8s_admission.label_value(value)
  assert 'nodeSelector:' in header
  buckets = [a for a in container['args'] if 'gs://' in a]
  for arg in buckets:
    flag, _, url = arg.partition('=')
    assert marked[flag] == [url]
    assert BUCKET.match(url[len('gs://'):].split('/')[0]), url
  claims = [v['persistentVolumeClaim']['claimName'] for v in
            pod.get('volumes', []) if 'persistentVolumeClaim' in v]
  for claim in claims:
    assert marked['claimName'] == [claim] and DNS1123_SUBDOMAIN.match(claim)
  assert ('claimName:' in header) == bool(claims)
  assert ('bucket' in header) == bool(buckets)
  if 'serviceAccountName' in pod:
    assert marked['serviceAccountName'] == [pod['serviceAccountName']]
    assert marked['name'] == [pod['serviceAccountName']]
    assert DNS1123_SUBDOMAIN.match(pod['serviceAccountName'])
    assert 'service account' in header


# --- The docs and the requirements ------------------------------------------


def test_the_jobset_release_named_is_the_one_the_schema_comes_from():
  """The install command in the docs and both headers names one release, at
  least the vendored schema's (v0.10.0: onJobFailureMessagePatterns)."""
  minimum = tuple(int(x) for x in
                  k8s_schema.JOBSET_VERSION.lstrip('v').split('.'))
  found = [JOBSET_RELEASE.findall(p.read_text()) for p in
           [DOCS, *MANIFESTS]]
  releases = {tuple(map(int, r)) for page in found for r in page}
  assert all(found) and len(releases) == 1 and min(releases) >= minimum
  readme = (k8s_schema.DATA / k8s_schema.JOBSET_VERSION / 'README.md')
  assert k8s_schema.JOBSET_VERSION in readme.read_text()
  assert (readme.parent / 'LICENSE').read_text().lstrip().startswith(
      'Apache License')


def test_the_docs_state_the_driver_and_digest_requirements():
  text = kubernetes_section()
  assert 'R580' in text and 'gpu-driver-version' in text
  assert '@sha256:' in text and 'ReadWriteMany' in text
