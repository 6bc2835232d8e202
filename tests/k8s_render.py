"""launch/k8s's manifests rendered as Kubernetes renders them for one pod.

No cluster runs here, so what a pod of a JobSet sees is worked out the way
the controllers and the kubelet work it out, and nothing else is trusted:

- The JobSet controller labels and annotates every pod template of the
  JobSet named in metadata.name (jobset-name, replicatedjob-name, job-index;
  with spec.coordinator, jobset.sigs.k8s.io/coordinator =
  "<jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>", the subdomain
  defaulting to the JobSet's name): labelAndAnnotateObject, CoordinatorEndpoint
  and GetSubdomain in pkg/controllers/jobset_controller.go (JobSet v0.10.0 to
  v0.12.0). The Job controller adds batch.kubernetes.io/job-completion-index
  to pod i of an Indexed Job.
- The kubelet resolves each env entry in order (makeEnvironmentVariables,
  pkg/kubelet/kubelet_pods.go): a fieldRef reads the pod's metadata (a
  missing label or annotation reads as ""); a `value` has its $(VAR)
  references expanded against the entries defined before it; command and
  args are expanded against the whole environment
  (ExpandContainerCommandAndArgs). Expansion follows
  third_party/forked/golang/expansion/expand.go: $(VAR) of a known VAR is
  replaced, of an unknown one left as written; $$ is one $; a $ before
  anything else, or an unclosed $(, is kept. Service-link variables (none
  that these manifests could name) are not modelled.
- The image's ENV (launch/k8s/Dockerfile) comes first; the container's env
  overrides it.

Shared by tests/test_k8s.py and tests/test_multiprocess_faults.py.
"""

import copy
import pathlib
import re
import shlex

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
K8S = REPO / 'launch' / 'k8s'
MANIFESTS = sorted(K8S.glob('*.yaml'))
NAMESPACE = 'default'
INDEX_KEY = 'batch.kubernetes.io/job-completion-index'
JOBSET_NAME_KEY = 'jobset.sigs.k8s.io/jobset-name'
COORDINATOR_KEY = 'jobset.sigs.k8s.io/coordinator'
# The downward API's fieldRef paths for env (Kubernetes' validation:
# validEnvDownwardAPIFieldPathExpressions, plus the subscripted two).
_FIELD_PATHS = ('metadata.name', 'metadata.namespace', 'metadata.uid',
                'spec.nodeName', 'spec.serviceAccountName', 'status.hostIP',
                'status.hostIPs', 'status.podIP', 'status.podIPs')
_SUBSCRIPTED = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def documents(path):
  return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]


def jobset(path, name=None):
  """The manifest's one JobSet; `name` renames it (a copy for a second
  experiment)."""
  [doc] = [d for d in documents(path) if d.get('kind') == 'JobSet']
  if name is not None:
    doc = copy.deepcopy(doc)
    doc['metadata']['name'] = name
  return doc


def pod_of(doc):
  """(the replicated job, its Job spec, its pod spec, the container)."""
  [rjob] = doc['spec']['replicatedJobs']
  job = rjob['template']['spec']
  pod = job['template']['spec']
  [container] = pod['containers']
  return rjob, job, pod, container


def subdomain(doc) -> str:
  return doc['spec'].get('network', {}).get('subdomain') or \
      doc['metadata']['name']


def coordinator_endpoint(doc) -> str:
  c = doc['spec']['coordinator']
  return (f"{doc['metadata']['name']}-{c['replicatedJob']}-"
          f"{c.get('jobIndex', 0)}-{c.get('podIndex', 0)}.{subdomain(doc)}")


def pod_metadata(doc, index, job_index=0):
  """What pod `index` of job `job_index` carries once both controllers have
  labelled it: {'name', 'namespace', 'labels', 'annotations', 'spec'}."""
  rjob, _, pod, _ = pod_of(doc)
  name = doc['metadata']['name']
  marks = {JOBSET_NAME_KEY: name,
           'jobset.sigs.k8s.io/replicatedjob-name': rjob['name'],
           'jobset.sigs.k8s.io/job-index': str(job_index),
           INDEX_KEY: str(index)}
  if 'coordinator' in doc['spec']:
    marks[COORDINATOR_KEY] = coordinator_endpoint(doc)
  template = rjob['template']['spec']['template'].get('metadata', {})
  return {'name': f"{name}-{rjob['name']}-{job_index}-{index}-x7k2p",
          'namespace': NAMESPACE,
          'labels': {**template.get('labels', {}), **marks},
          'annotations': {**template.get('annotations', {}), **marks},
          'spec': pod}


def field_value(meta, path) -> str:
  """A fieldRef, as the kubelet resolves it for env."""
  subscripted = _SUBSCRIPTED.match(path)
  if subscripted:
    return meta[subscripted.group(1)].get(subscripted.group(2), '')
  if path not in _FIELD_PATHS:
    raise ValueError(f'fieldRef {path!r} is not one the downward API gives '
                     'to env')
  if path == 'metadata.name':
    return meta['name']
  if path == 'metadata.namespace':
    return meta['namespace']
  if path == 'spec.serviceAccountName':
    return meta['spec'].get('serviceAccountName', 'default')
  raise ValueError(f'fieldRef {path!r} has no value before the pod runs')


def expand(text: str, mapping) -> str:
  """Kubernetes' $(VAR) expansion (expand.go); `mapping` a dict."""
  out, i = [], 0
  while i < len(text):
    if text[i] != '$' or i + 1 == len(text):
      out.append(text[i])
      i += 1
      continue
    after = text[i + 1]
    if after == '$':
      out.append('$')
      i += 2
    elif after == '(':
      close = text.find(')', i + 2)
      if close < 0:
        out.append('$(')
        i += 2
      else:
        name = text[i + 2:close]
        out.append(mapping[name] if name in mapping else f'$({name})')
        i = close + 1
    else:
      out.append('$' + after)
      i += 2
  return ''.join(out)


def container_env(container, meta) -> dict:
  """The container's env entries, resolved in order."""
  env = {}
  for entry in container.get('env', []):
    if entry.get('value'):
      env[entry['name']] = expand(entry['value'], env)
    elif 'valueFrom' in entry:
      path = entry['valueFrom']['fieldRef']['fieldPath']
      env[entry['name']] = field_value(meta, path)
    else:
      env[entry['name']] = ''
  return env


def render(manifest, index, name=None, dirs=None):
  """(environment, command, args) of pod `index` of `manifest` (a path, or
  a JobSet document): the image's ENV overridden by the container's env,
  and command/args expanded against that env (`dirs`: dockerfile_env)."""
  doc = manifest if isinstance(manifest, dict) else jobset(manifest, name)
  _, _, _, container = pod_of(doc)
  env = container_env(container, pod_metadata(doc, index))
  argv = [expand(a, env) for a in container['command'] + container['args']]
  split = len(container['command'])
  return {**dockerfile_env(dirs=dirs), **env}, argv[:split], argv[split:]


def pod_environment(manifest, index, coordinator=None, name=None, dirs=None):
  """Pod `index`'s environment. For processes run on this machine:
  `coordinator` (HOST:PORT) replaces the JAX_COORDINATOR_ADDRESS that names
  pod 0 through the cluster's DNS, and `dirs` maps the image's directories
  to local ones (by default /app, the code, to this checkout)."""
  env, _, _ = render(manifest, index, name, dirs)
  if coordinator is not None:
    env['JAX_COORDINATOR_ADDRESS'] = coordinator
  return env


def command_of(path):
  return pod_of(jobset(path))[3]['command']


def dockerfile_env(dockerfile=K8S / 'Dockerfile', dirs=None) -> dict:
  """The ENV instructions (continuation lines joined, values shell-quoted
  as Docker reads them); a value that is one of `dirs`' image directories,
  or below one, is mapped to its local one (default: /app, the code, to
  this checkout)."""
  dirs = dirs or {'/app': str(REPO)}
  text = re.sub(r'\\\n', ' ', pathlib.Path(dockerfile).read_text())
  env = {}
  for line in text.splitlines():
    if line.startswith('ENV '):
      env.update(kv.split('=', 1) for kv in shlex.split(line[4:]))
  for key, value in env.items():
    for image_dir, local in dirs.items():
      if value == image_dir or value.startswith(image_dir + '/'):
        env[key] = local + value[len(image_dir):]
  return env
