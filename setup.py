"""Setuptools entry point; the metadata lives in setup.cfg.

The packages are found here rather than listed: every package under ``common``, ``irp``,
``sixchat``, ``intermediary`` and ``sixid`` ships, plus ``twisted.plugins`` (the twistd plugin folder, which must not have an
``__init__.py``, so discovery cannot see it).
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["common", "common.*", "irp", "irp.*", "sixchat", "sixchat.*", "intermediary", "intermediary.*", "sixid", "sixid.*"]), "twisted.plugins"])
