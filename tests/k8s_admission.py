"""What the API server refuses beyond a document's schema.

A JobSet that passes its CRD's schema can still be refused by JobSet's
validating webhook, or accepted and then never run: the JobSet controller
creates each Job later, and the API server's Job validation refuses a bad
podFailurePolicy only then (the JobSet waits with an event nobody reads).
The rules checked here, each from its source:

- JobSet's webhook, v0.10.0 (pkg/webhooks/jobset_webhook.go, ValidateCreate):
  the longest generated Job name, <jobset>-<replicatedJob>-<replicas-1>, and
  pod name, <job name>-<completions-1>-abcde, are DNS-1035 labels of at most
  63 characters; failure policy rule names match
  ^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$, 1..128 long, unique; their
  onJobFailureReasons are Job failure reasons; their targetReplicatedJobs
  exist; the coordinator names an existing replicated job, job index and pod
  index of an Indexed Job.
- From v0.12.0 the webhook also refuses a coordinator endpoint that is not a
  valid label value (validateCoordinatorLabelValue); in v0.10.0 the
  controller would fail to label the Jobs instead. Either way: refused.
- Kubernetes' Job validation (pkg/apis/batch/validation/validation.go,
  validatePodFailurePolicy and its rules): restartPolicy Never; at most 20
  rules; action FailJob, Ignore or Count (FailIndex needs
  backoffLimitPerIndex); exactly one of onExitCodes and onPodConditions;
  operator In or NotIn; containerName one of the pod's containers; 1..255
  values, unique, ordered, no 0 with In; condition status True, False or
  Unknown (given: the JobSet CRD does not default it).
"""

import re

from tests import k8s_render

_DNS1035 = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')
_LABEL_VALUE = re.compile(r'^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')
_RULE_NAME = re.compile(r'^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$')
JOB_FAILURE_REASONS = ('BackoffLimitExceeded', 'DeadlineExceeded',
                       'FailedIndexes', 'MaxFailedIndexesExceeded',
                       'PodFailurePolicy')


def dns1035(name) -> bool:
  return len(name) <= 63 and bool(_DNS1035.match(name))


def label_value(value) -> bool:
  return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def jobset_errors(doc):
  """Everything JobSet's webhook (and labelling) refuses, one line each."""
  errs = []
  name = doc['metadata']['name']
  rjobs = {r['name']: r for r in doc['spec']['replicatedJobs']}
  for rjob in rjobs.values():
    job = rjob['template']['spec']
    longest_job = f"{name}-{rjob['name']}-{rjob['replicas'] - 1}"
    if not dns1035(longest_job):
      errs.append(f'job name {longest_job!r} is not a DNS-1035 label <= 63')
    if job.get('completionMode') == 'Indexed' and 'completions' in job:
      pod = f"{longest_job}-{job['completions'] - 1}-abcde"
      if not dns1035(pod):
        errs.append(f'pod name {pod!r} is not a DNS-1035 label <= 63')
  errs += _failure_policy_errors(doc['spec'].get('failurePolicy'), rjobs)
  if 'coordinator' in doc['spec']:
    errs += _coordinator_errors(doc, rjobs)
  return errs


def _failure_policy_errors(policy, rjobs):
  errs, names = [], []
  for rule in (policy or {}).get('rules', []):
    names.append(rule.get('name', ''))
    if not 1 <= len(names[-1]) <= 128 or not _RULE_NAME.match(names[-1]):
      errs.append(f'failure policy rule name {names[-1]!r} is invalid')
    errs += [f'target {t!r} is no replicated job'
             for t in rule.get('targetReplicatedJobs', []) if t not in rjobs]
    errs += [f'job failure reason {r!r} is not one of {JOB_FAILURE_REASONS}'
             for r in rule.get('onJobFailureReasons', [])
             if r not in JOB_FAILURE_REASONS]
  if len(set(names)) != len(names):
    errs.append(f'failure policy rule names are not unique: {names}')
  return errs


def _coordinator_errors(doc, rjobs):
  c = doc['spec']['coordinator']
  rjob = rjobs.get(c['replicatedJob'])
  if rjob is None:
    return [f"coordinator replicatedJob {c['replicatedJob']!r} does not exist"]
  job = rjob['template']['spec']
  errs = []
  if not 0 <= c.get('jobIndex', 0) < rjob['replicas']:
    errs.append(f"coordinator job index {c.get('jobIndex', 0)} is invalid")
  if job.get('completionMode') != 'Indexed' or 'completions' not in job:
    errs.append('job for coordinator pod must be Indexed, with completions')
  elif not 0 <= c.get('podIndex', 0) < job['completions']:
    errs.append(f"coordinator pod index {c.get('podIndex', 0)} is invalid")
  endpoint = k8s_render.coordinator_endpoint(doc)
  if not label_value(endpoint):
    errs.append(f'coordinator endpoint {endpoint!r} is not a valid label value')
  return errs


def job_errors(job):
  """What the API server's Job validation refuses in one Job spec."""
  policy = job.get('podFailurePolicy')
  if policy is None:
    return []
  pod = job['template']['spec']
  containers = {c['name'] for c in pod['containers'] +
                pod.get('initContainers', [])}
  errs = []
  if pod.get('restartPolicy') != 'Never':
    errs.append('podFailurePolicy needs restartPolicy: Never')
  if len(policy['rules']) > 20:
    errs.append('more than 20 podFailurePolicy rules')
  for i, rule in enumerate(policy['rules']):
    errs += [f'rule {i}: {e}' for e in _pod_rule_errors(rule, containers)]
  return errs


def _pod_rule_errors(rule, containers):
  errs = []
  if rule.get('action') not in ('FailJob', 'Ignore', 'Count'):
    errs.append(f"action {rule.get('action')!r} is not FailJob, Ignore, Count")
  if ('onExitCodes' in rule) == bool(rule.get('onPodConditions')):
    errs.append('exactly one of onExitCodes and onPodConditions is required')
  if 'onExitCodes' in rule:
    errs += _exit_code_errors(rule['onExitCodes'], containers)
  for pattern in rule.get('onPodConditions', []):
    if pattern.get('status') not in ('True', 'False', 'Unknown'):
      errs.append(f"condition status {pattern.get('status')!r} is invalid")
  return errs


def _exit_code_errors(req, containers):
  errs = []
  values = req.get('values', [])
  if req.get('operator') not in ('In', 'NotIn'):
    errs.append(f"operator {req.get('operator')!r} is not In or NotIn")
  if req.get('containerName', next(iter(containers))) not in containers:
    errs.append(f"containerName {req['containerName']!r} is not a container")
  if not 1 <= len(values) <= 255:
    errs.append('1 to 255 values are required')
  if len(set(values)) != len(values) or values != sorted(values):
    errs.append(f'values {values} must be unique and ordered')
  if req.get('operator') == 'In' and 0 in values:
    errs.append('values must not hold 0 for the In operator')
  return errs
