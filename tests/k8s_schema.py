"""The manifests' documents checked against the schemas the API server uses.

JobSet: the JobSet CRD's own openAPIV3Schema, vendored from the JobSet
release the manifests need at least (tests/data/jobset/<version>/, see its
README). `kubectl apply` asks for strict field validation, under which the
API server rejects a field the schema does not declare (structural schemas
never say additionalProperties: false; they prune, and strict validation
turns each pruned field into an error). So every object schema here that
declares properties and neither additionalProperties nor
x-kubernetes-preserve-unknown-fields is closed before validating. The
object's own metadata (left open in CRDs: the API server validates it as
ObjectMeta) gets the ObjectMeta fields these manifests may use. Not checked:
the CRD's x-kubernetes-validations (CEL; in v0.10.0 they only make fields
immutable or keep startupPolicy and dependsOn apart), and formats.

ServiceAccount (core/v1): a closed schema of its few fields.
"""

import copy
import functools
import pathlib

import jsonschema
import yaml

DATA = pathlib.Path(__file__).resolve().parent / 'data' / 'jobset'
JOBSET_VERSION = 'v0.10.0'
_STRING_MAP = {'type': 'object', 'additionalProperties': {'type': 'string'}}
OBJECT_META = {
    'type': 'object', 'additionalProperties': False,
    'required': ['name'],
    'properties': {'name': {'type': 'string'}, 'namespace': {'type': 'string'},
                   'labels': _STRING_MAP, 'annotations': _STRING_MAP}}
_NAME_REF = {'type': 'object', 'additionalProperties': False,
             'properties': {'name': {'type': 'string'}}}
SERVICE_ACCOUNT = {
    'type': 'object', 'additionalProperties': False,
    'required': ['apiVersion', 'kind', 'metadata'],
    'properties': {
        'apiVersion': {'const': 'v1'}, 'kind': {'const': 'ServiceAccount'},
        'metadata': OBJECT_META,
        'automountServiceAccountToken': {'type': 'boolean'},
        'imagePullSecrets': {'type': 'array', 'items': _NAME_REF},
        'secrets': {'type': 'array', 'items': {'type': 'object'}}}}


def closed(schema):
  """A copy of `schema` in which undeclared fields are errors."""
  schema = copy.deepcopy(schema)
  _close(schema)
  return schema


def _close(node):
  if isinstance(node, list):
    for item in node:
      _close(item)
    return
  if not isinstance(node, dict):
    return
  if ('properties' in node and 'additionalProperties' not in node and
      not node.get('x-kubernetes-preserve-unknown-fields')):
    node['additionalProperties'] = False
  for key, value in node.items():
    if key in ('properties', 'patternProperties'):
      for child in value.values():
        _close(child)
    elif key in ('items', 'additionalProperties', 'anyOf', 'allOf', 'oneOf',
                 'not'):
      _close(value)


@functools.lru_cache()
def jobset_schema(version=JOBSET_VERSION):
  crd = yaml.safe_load(
      (DATA / version / 'jobset.x-k8s.io_jobsets.yaml').read_text())
  [served] = [v for v in crd['spec']['versions'] if v['name'] == 'v1alpha2']
  schema = closed(served['schema']['openAPIV3Schema'])
  schema['properties']['metadata'] = OBJECT_META
  schema['properties']['apiVersion'] = {'const': 'jobset.x-k8s.io/v1alpha2'}
  schema['properties']['kind'] = {'const': 'JobSet'}
  schema['required'] = ['apiVersion', 'kind', 'metadata', 'spec']
  return schema


def errors(doc, version=JOBSET_VERSION):
  """Every schema error of one manifest document, as 'path: message'."""
  kinds = {'JobSet': lambda: jobset_schema(version),
           'ServiceAccount': lambda: SERVICE_ACCOUNT}
  kind = doc.get('kind')
  if kind not in kinds:
    return [f'kind {kind!r} is none of {sorted(kinds)}']
  validator = jsonschema.Draft7Validator(kinds[kind]())
  return [f'{".".join(map(str, e.absolute_path)) or "(top)"}: {e.message}'
          for e in sorted(validator.iter_errors(doc), key=str)]
