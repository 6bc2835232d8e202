"""What the Job and JobSet controllers do when pods of a manifest fail.

No cluster runs here; this applies a manifest's rules exactly as the two
controllers document and implement them, so that tests can ask what a given
pod outcome does to the run:

1. The Job controller (kubernetes pkg/controller/job/job_controller.go,
   syncJob; pod_failure_policy.go, matchPodFailurePolicy). In a sync, the
   failed pods it sees are matched against spec.podFailurePolicy, rules in
   order, the first match deciding: onExitCodes matches a terminated
   container (the named one) with a non-zero exit code In/NotIn the values;
   onPodConditions a pod condition of that type and status (status defaults
   to "True"). FailJob gives the Job the reason PodFailurePolicy and the
   message "Container %s for pod %s/%s failed with exit code %v matching %v
   rule at index %d" or "Pod %s/%s has condition %v matching %v rule at index
   %d"; the first failed pod with a FailJob match wins, before the backoff
   limit is looked at. Ignore does not count the pod; Count and no match do.
   Then more counted failures than backoffLimit fail the Job with reason
   BackoffLimitExceeded, "Job has reached the specified backoff limit".
2. The JobSet controller (jobset pkg/controllers/failure_policy.go,
   executeFailurePolicy, findFirstFailedPolicyRuleAndJob, ruleIsApplicable;
   site/content/en/docs/tasks/failure_policy.md). A failed Job is matched
   against failurePolicy.rules in order, the first applicable rule's action
   taken: a rule applies when the reason is in onJobFailureReasons (empty:
   any), some onJobFailureMessagePatterns regex matches the message (Go's
   regexp.MatchString: a search, not anchored unless the pattern is; empty:
   any), and the Job's replicated job is in targetReplicatedJobs (empty:
   any). No match: RestartJobSet. RestartJobSet fails the JobSet instead once
   status.restartsCountTowardsMax has reached maxRestarts; otherwise it
   restarts every Job and counts; RestartJobSetAndIgnoreMaxRestarts restarts
   without counting; FailJobSet fails the JobSet. With no failurePolicy at
   all, a failed Job fails the JobSet.
"""

import dataclasses
import re
from typing import Optional, Sequence, Tuple

from tests import k8s_render


@dataclasses.dataclass(frozen=True)
class FailedPod:
  """A pod the Job controller sees as failed: its completion index, the
  exit code of the manifest's one container (the trainer), and its True
  conditions (e.g. DisruptionTarget, which Kubernetes adds to a pod it
  preempts, evicts or shuts down with its node)."""
  index: int
  exit_code: int
  conditions: Tuple[str, ...] = ()


def pod_name(doc, pod: FailedPod) -> str:
  return k8s_render.pod_metadata(doc, pod.index)['name']


def match_pod_failure_policy(doc, pod: FailedPod):
  """(FailJob message or None, counted, action or None) for one failed pod."""
  _, job, _, container = k8s_render.pod_of(doc)
  policy = job.get('podFailurePolicy')
  if policy is None:
    return None, True, None
  where = f'{k8s_render.NAMESPACE}/{pod_name(doc, pod)}'
  for index, rule in enumerate(policy['rules']):
    if 'onExitCodes' in rule:
      found = _exit_code_matches(rule['onExitCodes'], container['name'], pod)
      what = (f'Container {container["name"]} for pod {where} failed with '
              f'exit code {pod.exit_code}')
    else:
      found = _condition_matches(rule.get('onPodConditions', []), pod)
      what = f'Pod {where} has condition {found}'
    if not found:
      continue
    action = rule['action']
    if action == 'Ignore':
      return None, False, action
    if action == 'Count':
      return None, True, action
    if action == 'FailJob':
      return f'{what} matching FailJob rule at index {index}', True, action
    raise ValueError(f'podFailurePolicy action {action!r} is not modelled')
  return None, True, None


def _exit_code_matches(requirement, container: str, pod: FailedPod) -> bool:
  """The manifest's one container exited with pod.exit_code."""
  if requirement.get('containerName', container) != container:
    return False
  if pod.exit_code == 0:
    return False
  inside = pod.exit_code in requirement['values']
  return inside if requirement['operator'] == 'In' else (
      requirement['operator'] == 'NotIn' and not inside)


def _condition_matches(patterns, pod: FailedPod) -> Optional[str]:
  for condition in pod.conditions:
    for pattern in patterns:
      status = pattern.get('status', 'True')  # The API's default.
      if condition == pattern['type'] and status == 'True':
        return condition
  return None


def job_failure(doc, failed: Sequence[FailedPod], counted_before=0):
  """One sync of the Job controller that sees `failed` (in the order it
  lists them): (reason, message) if the Job fails, else None."""
  _, job, _, _ = k8s_render.pod_of(doc)
  counted = counted_before
  for pod in failed:
    message, count, _ = match_pod_failure_policy(doc, pod)
    if message is not None:
      return 'PodFailurePolicy', message
    counted += count
  if counted > job.get('backoffLimit', 6):
    return 'BackoffLimitExceeded', 'Job has reached the specified backoff limit'
  return None


def jobset_action(doc, reason: str, message: str) -> str:
  """The action the JobSet controller takes on a Job that failed so."""
  policy = doc['spec'].get('failurePolicy')
  if policy is None:
    return 'FailJobSet'
  rjob, _, _, _ = k8s_render.pod_of(doc)
  for rule in policy.get('rules', []):
    reasons = rule.get('onJobFailureReasons', [])
    patterns = rule.get('onJobFailureMessagePatterns', [])
    targets = rule.get('targetReplicatedJobs', [])
    if ((not reasons or reason in reasons) and
        (not patterns or any(re.search(p, message) for p in patterns)) and
        (not targets or rjob['name'] in targets)):
      return rule['action']
  return 'RestartJobSet'


@dataclasses.dataclass
class JobSetStatus:
  """status.restarts, status.restartsCountTowardsMax and the end."""
  restarts: int = 0
  counted: int = 0
  failed: Optional[str] = None  # The reason, once the JobSet has failed.


def apply_action(doc, status: JobSetStatus, action: str):
  max_restarts = doc['spec'].get('failurePolicy', {}).get('maxRestarts', 0)
  if action == 'FailJobSet':
    status.failed = 'FailJobSetAction'
  elif action == 'RestartJobSet':
    if status.counted >= max_restarts:
      status.failed = 'ReachedMaxRestarts'
    else:
      status.restarts += 1
      status.counted += 1
  elif action == 'RestartJobSetAndIgnoreMaxRestarts':
    status.restarts += 1
  else:
    raise ValueError(f'action {action!r} is not modelled')


def outcome(doc, failed: Sequence[FailedPod], status=None) -> JobSetStatus:
  """The JobSet's status after the Job controller has seen `failed`."""
  status = status or JobSetStatus()
  failure = job_failure(doc, failed)
  if failure is not None:
    apply_action(doc, status, jobset_action(doc, *failure))
  return status
