"""How the suite spreads over processes (`make test` runs pytest-xdist).

`make test` passes `-n N --dist loadgroup`: tests go to N worker processes
one by one, except that the tests of a module that share one of its
module- or session-scoped fixtures (one training run that several tests
read, say) form one group that runs on one worker, so the fixture is built
once. The grouping below is automatic: a new shared fixture needs no mark.
"""

import pytest


def shared_fixtures(item):
  """The module- or session-scoped fixtures of tests/ that an item uses
  (pytest's and plugins' own, such as tmp_path_factory, have no baseid)."""
  info = getattr(item, '_fixtureinfo', None)
  if info is None:
    return []
  return sorted(
      name for name, definitions in info.name2fixturedefs.items()
      if definitions and definitions[-1].baseid
      and definitions[-1].scope in ('module', 'session'))


@pytest.hookimpl(tryfirst=True)  # Before xdist reads the marks.
def pytest_collection_modifyitems(config, items):
  for item in items:
    if shared_fixtures(item):
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
