"""The numerical core (numpy, scipy, numba; no Nipype, no pybids). Importing it first gives numba a cache it can
write, before any kernel is decorated (jitcache.usable_cache: a read-only image, no home)."""

from . import jitcache

jitcache.set_up()
