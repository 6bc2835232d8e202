"""benchmarks/comm_volume.py: the HLO parser on literal lines, and the
measured volumes of a tiny net's real train step on 4 simulated devices."""

import argparse

import pytest

from benchmarks import comm_volume as cv

ALL_REDUCE = (
    '  %all-reduce.22 = (f32[96]{0}, f32[4096,9216]{1,0}, f32[]) '
    'all-reduce(%a, %b, %c), channel_id=4, replica_groups=mesh'
    "['axis_0'=8,'axis_1'=1] {'axis_0'}, use_global_device_ids=true, "
    'to_apply=%add')


def test_shape_bytes():
  assert cv.shape_bytes('f32[4096,9216]{1,0}') == 4096 * 9216 * 4
  assert cv.shape_bytes('(bf16[2,3]{1,0}, s32[], pred[5]{0}, u8[7]{0})') == (
      12 + 4 + 5 + 7)
  assert cv.shape_bytes('token[]') == 0


def test_group_sizes():
  assert cv.group_size(ALL_REDUCE, 64) == 8
  assert cv.group_size(
      "x replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0','axis_1'}, y",
      64) == 8
  assert cv.group_size('x replica_groups=[2,4]<=[8], y', 8) == 4
  assert cv.group_size('x replica_groups={{0,1},{2,3}}, y', 4) == 2
  assert cv.group_size('x replica_groups={}, y', 4) == 4


def test_collectives_by_kind():
  hlo = '\n'.join([
      '  %a = f32[96]{0} fusion(%x), kind=kLoop',
      '  %b = f32[4096,9216]{1,0} fusion(%y), kind=kLoop',
      '  %c = f32[] constant(0)',
      '  %s = f32[16,9216]{1,0} fusion(%z), kind=kLoop',
      ALL_REDUCE,
      # Operands by name: the shard's bytes (not the gathered result's).
      "  %all-gather = f32[128,9216]{1,0} all-gather(%s), replica_groups="
      "mesh['axis_0'=8] {'axis_0'}, dimensions={0}",
      # Async: the start counts once (typed operand), the done not at all.
      '  %cp = (f32[10]{0}, f32[10]{0}, u32[], u32[]) collective-permute-'
      'start(f32[10]{0} %q), source_target_pairs={{0,1},{1,0}}',
      '  %cpd = f32[10]{0} collective-permute-done(%cp)',
  ])
  got = cv.collectives(hlo, 8)
  full = (96 + 4096 * 9216 + 1) * 4
  assert got['all-reduce'] == {'ops': 1, 'bytes': full,
                               'wire': 2 * 7 / 8 * full}
  assert got['all-gather'] == {'ops': 1, 'bytes': 16 * 9216 * 4,
                               'wire': 7 * 16 * 9216 * 4}
  assert got['collective-permute']['ops'] == 1
  assert got['collective-permute']['bytes'] == 40
  assert got['reduce-scatter']['ops'] == got['all-to-all']['ops'] == 0


def test_tiny_net_on_4_devices():
  """The real step: under data parallelism the all-reduce carries exactly the
  gradients (plus a few metric scalars); with the FC layers split over
  'model' it carries less, and activations are gathered instead."""
  args = argparse.Namespace(
      models='alexnet_tiny', layouts='dp,fc_model', dtypes='f32', batch=16,
      model_parallelism=2, image_size=0, dump_hlo='')
  rows = {r['layout']: r for r in cv.run_devices(4, args)}
  dp, fc = rows['dp'], rows['fc_model']
  assert dp['mesh'] == {'runs': 1, 'data': 4, 'model': 1, 'tower': 1}
  assert fc['mesh'] == {'runs': 1, 'data': 2, 'model': 2, 'tower': 1}
  grads = dp['param_bytes']
  reduced = dp['collectives']['all-reduce']['bytes']
  assert grads <= reduced <= grads + 64, (grads, reduced)
  assert fc['param_bytes'] == grads
  assert fc['collectives']['all-reduce']['bytes'] < reduced
  assert fc['collectives']['all-gather']['ops'] >= 3
  assert 'towers' in cv.LAYOUTS
