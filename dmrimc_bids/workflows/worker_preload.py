"""Preloaded by MultiProc's forkserver workers (nipype_logging.route): importing it applies the Nipype log
routing recorded in the environment to the worker. Its import is its only purpose; nothing else imports it."""

from .nipype_logging import apply

apply()
